// Sign in / sign up. Both end with POST /api/login, whose answer sets the HttpOnly session
// cookie; the token in its body is deliberately dropped.

import { api, explain } from "../api.js";
import { clearErrors, field, h, showApiError } from "../dom.js";

export function authView(root, app, notice) {
  const username = field(
    "Username",
    h("input", {
      name: "username",
      autocomplete: "username",
      autocapitalize: "none",
      spellcheck: "false",
    }),
    {
      hint: "3–32 letters, digits, dot, dash or underscore.",
    },
  );
  const password = field(
    "Password",
    h("input", { name: "password", type: "password", autocomplete: "current-password" }),
    {
      hint: "At least 8 characters.",
    },
  );
  const general = h("p", { class: "form-error", role: "alert", hidden: true });
  const signIn = h("button", { type: "submit", class: "btn primary", value: "sign-in" }, "Sign in");
  const signUp = h("button", { type: "submit", class: "btn", value: "sign-up" }, "Sign up");
  const fields = { username, password };

  const form = h(
    "form",
    { class: "card auth", novalidate: true, "aria-labelledby": "auth-title" },
    h("h1", { id: "auth-title" }, "Welcome to Duckcast"),
    h("p", { class: "lede" }, "A shared list that updates live for everyone on it."),
    notice && h("p", { class: "notice" }, notice),
    username.wrap,
    password.wrap,
    general,
    h("div", { class: "actions" }, signIn, signUp),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const creating = event.submitter === signUp;
    const name = username.input.value.trim();
    const secret = password.input.value;
    clearErrors(fields, general);
    signIn.disabled = signUp.disabled = true;
    try {
      if (creating) await api.register(name, secret);
      const session = await api.login(name, secret);
      app.signedIn(session.user);
    } catch (error) {
      showApiError(error, fields, general, explain);
    } finally {
      signIn.disabled = signUp.disabled = false;
    }
  });

  root.append(h("section", { class: "auth-wrap" }, form));
  username.input.focus();
  return { unmount() {} };
}
