/* The login form: POST /login with the token as JSON; a wrong token is shown on the form,
 * a right one goes on to the page asked for (the server checked that it is on this site). */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  document.body.dataset.ready = "yes";
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  const token = document.getElementById("token");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    let response = null;
    try {
      response = await fetch("/login", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token: token.value.trim() }),
      });
    } catch (failure) {
      error.textContent = "Cannot reach the router: is it running?";
    }
    button.disabled = false;
    if (response && response.ok) {
      location.assign(form.elements.next.value || "/");
      return;
    }
    if (response) {
      error.textContent = response.status === 401
        ? "Wrong token. Copy it again from `dde token` (or $DDE_API_TOKEN)."
        : `The router refused the login (HTTP ${response.status}).`;
    }
    error.hidden = false;
    token.select();
  });
});
