from dde.cli import main

main()
