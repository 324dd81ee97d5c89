// botsim admin panel: the account page (/account): password, API tokens, users.
// Uses panel.js's helpers (send, detailText, fieldProblems, showError, API), loaded first.
// A new token is put into the page with textContent only, and never stored.
"use strict";

function accountProblem(r) {
  const problems = fieldProblems(r.body);
  if (problems && problems.length) return problems.map(([f, m]) => (f ? f + ": " : "") + m).join("; ");
  return detailText(r.body, r.status);
}

function initAccount() {
  if (document.body.dataset.page !== "account") return;
  const pwForm = document.getElementById("password-form");
  if (pwForm) {
    const status = document.getElementById("password-status");
    pwForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const data = new FormData(pwForm);
      if (data.get("new_password") !== data.get("confirm")) {
        status.textContent = "the two new passwords differ";
        return;
      }
      const r = await send("POST", API + "/auth/password", {
        current_password: data.get("current_password"), new_password: data.get("new_password"),
      });
      pwForm.reset();
      status.textContent = r.ok
        ? "password changed; " + r.body.sessions_ended + " other session(s) ended, "
          + r.body.tokens_revoked + " token(s) revoked"
        : "not changed: " + accountProblem(r);
    });
  }
  const tokenForm = document.getElementById("token-form");
  if (tokenForm) {
    const status = document.getElementById("token-status");
    tokenForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const data = new FormData(tokenForm);
      const body = { name: data.get("name"), scope: data.get("scope") };
      if (data.get("expires_in")) body.expires_in = data.get("expires_in");
      const r = await send("POST", API + "/auth/tokens", body);
      if (!r.ok) {
        status.textContent = "not created: " + accountProblem(r);
        return;
      }
      status.textContent = "created token #" + r.body.id + " (" + r.body.scope
        + ", expires " + r.body.expires_at + ")";
      document.getElementById("token-value").textContent = r.body.token;
      document.getElementById("token-new").hidden = false;
      tokenForm.reset();
    });
  }
  async function act(button, method, path, body, what) {
    button.disabled = true;
    const r = await send(method, path, body);
    if (r.ok) {
      window.location.reload();
      return;
    }
    button.disabled = false;
    showError(what + ": " + accountProblem(r));
  }
  for (const b of document.querySelectorAll("button.revoke-token[data-id]")) {
    b.addEventListener("click", () => {
      if (!window.confirm("Revoke API token #" + b.dataset.id + "? Scripts using it stop at once.")) return;
      act(b, "DELETE", API + "/auth/tokens/" + encodeURIComponent(b.dataset.id), undefined, "not revoked");
    });
  }
  for (const b of document.querySelectorAll("button.disable-user[data-id]")) {
    b.addEventListener("click", () => {
      if (!window.confirm("Disable this user? Their sessions end and their tokens stop working.")) return;
      act(b, "POST", API + "/users/" + encodeURIComponent(b.dataset.id) + "/disable", undefined, "not disabled");
    });
  }
  for (const b of document.querySelectorAll("button.enable-user[data-id]")) {
    b.addEventListener("click", () =>
      act(b, "POST", API + "/users/" + encodeURIComponent(b.dataset.id) + "/enable", undefined, "not enabled"));
  }
  for (const b of document.querySelectorAll("button.end-sessions[data-user]")) {
    b.addEventListener("click", () =>
      act(b, "DELETE", API + "/users/" + encodeURIComponent(b.dataset.user) + "/sessions", undefined, "not ended"));
  }
  for (const b of document.querySelectorAll("button.set-password[data-id]")) {
    b.addEventListener("click", () => {
      const pw = window.prompt("New password for " + b.dataset.name + " (8 characters or more). "
        + "Their sessions end and their API tokens are revoked.");
      if (!pw) return;
      act(b, "POST", API + "/users/" + encodeURIComponent(b.dataset.id) + "/password",
        { new_password: pw }, "not set");
    });
  }
}

document.addEventListener("DOMContentLoaded", initAccount);
