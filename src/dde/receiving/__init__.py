"""The receiving side: C-ECHO/C-STORE SCP, header parsing and the durable spool."""
