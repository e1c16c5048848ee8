// Sign-in for the browser apps and the shared page frame (header with the user and
// "Sign out"). Each app calls start({title, roles, render}); render(main, user) draws the
// app once someone allowed is signed in.

import { api, ApiError, setCsrfToken } from './api.js';
import { h, replace } from './dom.js';

const ROLE_NAMES = {
  student: 'Student',
  vendor_staff: 'Vendor staff',
  campus_admin: 'Campus admin',
  platform_admin: 'Platform admin',
};

/** Starts an app: checks the session, shows sign-in or the app. */
export async function start({ title, roles, render }) {
  const root = document.getElementById('app');
  let stop = null;
  const show = async () => {
    if (stop) {
      stop();
      stop = null;
    }
    let session = null;
    try {
      const body = await api('GET', '/auth/web/session', undefined, { announce: false });
      session = body.data;
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401) {
        replace(root, errorPanel(title, e));
        return;
      }
    }
    if (!session) {
      replace(root, signInForm(title, show));
      return;
    }
    setCsrfToken(session.csrfToken);
    const user = session.user;
    const main = h('main', { id: 'main', class: 'app-main' });
    replace(root, header(title, user, show), main);
    if (!roles.includes(user.role)) {
      replace(
        main,
        h('p', { class: 'notice', role: 'alert' },
          `${ROLE_NAMES[user.role] || user.role} accounts cannot use this page.`),
      );
      return;
    }
    stop = (await render(main, user)) || null;
  };
  window.addEventListener('itsur:signed-out', () => show());
  await show();
}

function header(title, user, onSignedOut) {
  const signOut = h('button', { type: 'button', class: 'secondary', id: 'sign-out' }, 'Sign out');
  signOut.addEventListener('click', async () => {
    signOut.disabled = true;
    try {
      await api('POST', '/auth/web/logout', undefined, { retryAuth: false });
    } catch (_) {
      // Already signed out or offline: show sign-in anyway; the cookie is HttpOnly and
      // the server refuses a revoked session.
    }
    setCsrfToken(null);
    onSignedOut();
  });
  return h('header', { class: 'app-header' },
    h('h1', {}, title),
    h('nav', { class: 'app-nav', id: 'app-nav', 'aria-label': 'Sections' }),
    h('div', { class: 'who' },
      h('span', { class: 'who-name' }, user.displayName),
      h('span', { class: 'who-role' }, ROLE_NAMES[user.role] || user.role),
      signOut));
}

function signInForm(title, onSignedIn) {
  const email = h('input', { id: 'email', name: 'email', type: 'email', autocomplete: 'username', required: true });
  const password = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const error = h('p', { class: 'error', role: 'alert', id: 'sign-in-error' });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'sign-in', method: 'post', action: '#', 'aria-labelledby': 'sign-in-title' },
    h('h2', { id: 'sign-in-title' }, 'Sign in'),
    h('label', { for: 'email' }, 'E-mail'), email,
    h('label', { for: 'password' }, 'Password'), password,
    button, error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    error.textContent = '';
    try {
      await api('POST', '/auth/web/login', { email: email.value, password: password.value }, { retryAuth: false });
      password.value = '';
      await onSignedIn();
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401
        ? 'Wrong e-mail or password.'
        : `Could not sign in: ${e.message}`;
      button.disabled = false;
    }
  });
  return h('main', { id: 'main', class: 'app-main centered' },
    h('h1', { class: 'product' }, title), form);
}

function errorPanel(title, e) {
  return h('main', { id: 'main', class: 'app-main centered' },
    h('h1', { class: 'product' }, title),
    h('p', { class: 'error', role: 'alert' }, `The server could not be reached: ${e.message}`));
}
