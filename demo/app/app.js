// The Data Fetcher SPA. It holds no token: the BFF (Envoy with the bff filter) keeps the session
// in an HttpOnly cookie and puts the access token on the API calls it forwards. The page only
// asks the BFF who is signed in (/private/session), calls the API through it, and navigates to
// its login and logout URLs.

const PREFIX = '/private';
// Every non-navigation request under the prefix carries this header: a page on another site
// cannot add it without a CORS preflight, which the BFF does not allow (the filter's CSRF check).
const CSRF = { 'X-CSRF': '1' };

const $ = (id) => document.getElementById(id);
const ui = {
  who: $('who'),
  detail: $('session-detail'),
  login: $('login'),
  getData: $('get-data'),
  sensitive: $('sensitive'),
  logout: $('logout'),
  error: $('error'),
  errorStatus: $('error-status'),
  errorBody: $('error-body'),
  resultPanel: $('result-panel'),
  result: $('result'),
  resultSource: $('result-source'),
};

let session = null; // the /private/session answer while signed in

async function callBff(path) {
  return fetch(path, { credentials: 'include', headers: CSRF, cache: 'no-store' });
}

// The body as pretty JSON when it is JSON, else as text.
async function readBody(response) {
  const text = await response.text();
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function time(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function showSession(state, text, detail = '') {
  ui.who.dataset.state = state;
  ui.who.textContent = text;
  ui.detail.textContent = detail;
  ui.detail.hidden = detail === '';
  ui.logout.disabled = session === null;
  ui.login.disabled = session !== null;
}

async function refreshSession() {
  let response;
  try {
    response = await callBff(`${PREFIX}/session`);
  } catch (err) {
    session = null;
    showSession('unknown', 'Session unknown', `The BFF could not be reached: ${err.message}`);
    return;
  }
  if (response.ok) {
    session = await response.json();
    const claims = session.claims ?? {};
    const name = claims.name ?? claims.preferred_username ?? session.sub;
    const email = claims.email ? ` (${claims.email})` : '';
    const until = session.session_expires_at ? `Session until ${time(session.session_expires_at)}` : '';
    showSession('signed-in', `Signed in as ${name}${email}`, until);
    return;
  }
  session = null;
  // Read the answer to the end even when it is not shown: the connection is free again.
  const body = await response.text();
  if (response.status === 401) {
    showSession('signed-out', 'Not signed in');
  } else {
    let message = '';
    try {
      message = JSON.parse(body).message ?? '';
    } catch {
      // not JSON: the status says enough
    }
    showSession('unknown', 'Not signed in',
      `GET ${PREFIX}/session answered ${response.status} ${response.statusText} ${message}`.trim());
  }
}

function showError(status, body) {
  ui.resultPanel.hidden = true;
  ui.errorStatus.textContent = status;
  ui.errorBody.textContent = body;
  ui.errorBody.hidden = body === '';
  ui.error.hidden = false;
}

function showResult(body, path) {
  ui.error.hidden = true;
  ui.resultSource.textContent = `GET ${path}`;
  ui.result.textContent = body;
  ui.resultPanel.hidden = false;
}

async function getData() {
  ui.getData.disabled = true;
  ui.getData.setAttribute('aria-busy', 'true');
  try {
    const response = await callBff(`${PREFIX}/api/items`);
    const body = await readBody(response);
    if (response.ok) {
      showResult(body, `${PREFIX}/api/items`);
    } else {
      showError(`HTTP ${response.status} ${response.statusText}`.trim(), body);
      // A 401 means the session ended (expired, or logged out in another tab).
      if (response.status === 401 && session !== null) await refreshSession();
    }
  } catch (err) {
    showError('The request failed', err.message);
  } finally {
    ui.getData.disabled = false;
    ui.getData.removeAttribute('aria-busy');
  }
}

// The "sensitive" API needs a stronger login than the session's: the BFF answers 401
// step_up_required with a login URL, which the page follows (back to this page afterwards).
async function sensitiveAction() {
  ui.sensitive.disabled = true;
  try {
    const response = await callBff(`${PREFIX}/api/sensitive`);
    const body = await readBody(response);
    if (response.ok) {
      showResult(body, `${PREFIX}/api/sensitive`);
      return;
    }
    let answer = {};
    try {
      answer = JSON.parse(body);
    } catch {
      // not JSON: shown as it is
    }
    if (response.status === 401 && answer.error === 'step_up_required' && answer.login) {
      const login = new URL(answer.login, window.location.origin);
      login.searchParams.set('return_to', '/');
      window.location.assign(login.pathname + login.search);
      return;
    }
    showError(`HTTP ${response.status} ${response.statusText}`.trim(), body);
  } catch (err) {
    showError('The request failed', err.message);
  } finally {
    ui.sensitive.disabled = false;
  }
}

// Login and logout are navigations, not fetches: the BFF redirects the whole page to the IdP.
ui.login.addEventListener('click', () => {
  // Back to this app's root once signed in (the filter accepts only a same-origin path).
  window.location.assign(`${PREFIX}/login?return_to=/`);
});
ui.logout.addEventListener('click', () => {
  if (session?.logout_url) window.location.assign(session.logout_url);
});
ui.getData.addEventListener('click', getData);
ui.sensitive.addEventListener('click', sensitiveAction);

refreshSession();
