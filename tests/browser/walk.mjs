#!/usr/bin/env node
// Walks the demo SPA (demo/app/) through the BFF as a person would, in Debian's Chromium driven
// by playwright-core: open the app, Get Data while signed out, Login at the IdP, see who is
// signed in, Get Data, look for tokens where page scripts could see them, Logout at the IdP,
// Get Data again.
//
//   node tests/browser/walk.mjs --app http://localhost:PORT/ [--user alice]
//        [--password wonderland] [--artifacts tests/artifacts/browser]
//        [--chromium /usr/bin/chromium] [--step-timeout-ms 15000]
//
// Every step reports on its own (pass, fail, or skip when a step it needs did not pass), with a
// screenshot in the artifacts dir. Prints exactly one JSON line on stdout:
//   {"ok": bool, "steps": [{"name", "status", "detail", "ms", "screenshot"}], ...}
// and exits 1 if any step did not pass (2 for a bad command line or a browser that won't start).
// The same JSON goes to <artifacts>/results.json. Diagnostics go to stderr; no token is printed.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const SESSION_COOKIE = '__Host-bff-session';
// What a token in a body looks like: a token response's keys, or a JWS (header.payload.).
const TOKEN_KEY_RE = /"(access_token|refresh_token|id_token)"\s*:/;
const JWT_RE = /eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\./;
const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);

// --- command line -----------------------------------------------------------------------------

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      app: { type: 'string' },
      user: { type: 'string', default: 'alice' },
      password: { type: 'string', default: 'wonderland' },
      artifacts: { type: 'string', default: 'tests/artifacts/browser' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
      'step-timeout-ms': { type: 'string', default: '15000' },
    },
  }));
  if (!opts.app) throw new Error('--app URL is required (e.g. http://localhost:8080/)');
} catch (err) {
  process.stderr.write(`walk: ${err.message}\n`);
  process.exit(2);
}

const appUrl = new URL(opts.app);
const appOrigin = appUrl.origin;
const stepTimeout = Number(opts['step-timeout-ms']);
const artifacts = path.resolve(opts.artifacts);
fs.mkdirSync(artifacts, { recursive: true });
for (const old of fs.readdirSync(artifacts)) {
  if (old.endsWith('.png')) fs.rmSync(path.join(artifacts, old));
}

function log(message) {
  process.stderr.write(`walk: ${message}\n`);
}

class CheckFailed extends Error {}

// What one step learned for a later one, and the step now running (responses are tagged with it).
const state = { current: null };

function expect(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

// --- the browser ------------------------------------------------------------------------------

// A fresh profile each run: no cookies, storage or cache from an earlier walk.
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bff-walk-'));
process.on('exit', () => fs.rmSync(userDataDir, { recursive: true, force: true }));

const ARGS = [
  '--headless=new',
  '--no-sandbox', // as root (the CI machines), Chromium refuses to start with its sandbox
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Shared memory in /tmp, not /dev/shm (64 MB in a default container): Debian's launcher
  // means to add this itself when /dev/shm is small, but its check (/etc/chromium.d/dev-shm)
  // fails with "[: unexpected operator" on some machines, this one included.
  '--disable-dev-shm-usage',
  // `localhost` must be the IPv4 loopback, where Envoy listens (not ::1 first).
  '--host-resolver-rules=MAP localhost 127.0.0.1',
];

let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opts.chromium,
    headless: true,
    args: ARGS,
    viewport: { width: 1000, height: 760 },
    timeout: 60_000,
  });
} catch (err) {
  log(`cannot start ${opts.chromium}: ${err.message}`);
  process.stdout.write(`${JSON.stringify({ ok: false, error: `chromium did not start: ${err.message}` })}\n`);
  process.exit(2);
}
context.setDefaultTimeout(stepTimeout);

// Every request must stay on this machine; anything else is refused and remembered.
const offLoopback = [];
function isLoopback(url) {
  const u = new URL(url);
  return !u.protocol.startsWith('http') || LOOPBACK_HOSTS.has(u.hostname);
}
await context.route((url) => !isLoopback(url.href), (route) => {
  offLoopback.push(new URL(route.request().url()).origin);
  return route.abort('blockedbyclient');
});

// Every response body the browser received, to look for tokens afterwards. A document the page
// has navigated away from may never give its body up: such a read is given up on at the end.
const responses = [];
context.on('response', (response) => {
  const entry = { url: response.url(), status: response.status(), body: null, read: 'pending', step: state.current };
  responses.push(entry);
  if (response.status() >= 300 && response.status() < 400) {
    entry.read = 'redirect';
    return;
  }
  entry.done = response.text().then(
    (body) => { entry.body = body; entry.read = 'ok'; },
    () => { entry.read = 'unreadable'; },
  );
});

async function settleBodies(timeoutMs) {
  const reads = responses.map((r) => r.done).filter(Boolean);
  await Promise.race([Promise.allSettled(reads), new Promise((resolve) => { setTimeout(resolve, timeoutMs); })]);
}

// URLs that carried a JWT (the end-session redirect's id_token_hint): reported, not a failure.
const jwtInUrls = new Set();
context.on('request', (request) => {
  let url = request.url();
  try {
    url = decodeURIComponent(url);
  } catch {
    // not percent-decodable: look at it as it is
  }
  if (JWT_RE.test(url)) jwtInUrls.add(new URL(request.url()).pathname);
});

const page = context.pages()[0] ?? await context.newPage();
// A persistent context has no Browser object to ask (and the user agent is reduced to 156.0.0.0).
const browserVersion = await (async () => {
  try {
    const cdp = await context.newCDPSession(page);
    return (await cdp.send('Browser.getVersion')).product;
  } catch {
    return null;
  }
})();
const pageErrors = [];
page.on('pageerror', (err) => pageErrors.push(`${page.url()}: ${err.message}`));
page.on('console', (msg) => {
  if (msg.type() === 'error' && /Content Security Policy/i.test(msg.text())) {
    pageErrors.push(`${page.url()}: ${msg.text()}`);
  }
});

// --- helpers over the app's page ---------------------------------------------------------------

const onApp = () => new URL(page.url()).origin === appOrigin;
const text = async (selector) => (await page.locator(selector).innerText()).trim();
const visible = (selector) => page.locator(selector).isVisible();

// The app has asked /private/session and shows the answer.
async function sessionShown() {
  await page.locator('#who:not([data-state="checking"])').waitFor();
  return text('#who');
}

// Click Get Data and wait for the API's answer and for the page to show it.
async function getData() {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url() === new URL('/private/api/items', appOrigin).href),
    page.locator('#get-data').click(),
  ]);
  await page.locator('#get-data:not([aria-busy])').waitFor();
  return response;
}

// Leave the app by clicking `button`, sign in on the IdP's form (its username field is also
// #login, so go by the password field), and come back to the app's root. Returns the URL the
// app sent the browser to; the form's screenshot goes to state.extraShots.
async function signInAtIdp(button, formShot) {
  await Promise.all([
    page.waitForURL((u) => u.origin !== appOrigin),
    page.locator(button).click(),
  ]);
  const authorize = new URL(page.url());
  await page.locator('input[name="password"]').waitFor();
  await page.locator('input[name="login"]').fill(opts.user);
  await page.locator('input[name="password"]').fill(opts.password);
  state.extraShots = [await shot(formShot)];
  await Promise.all([
    page.waitForURL((u) => u.origin === appOrigin && u.pathname === '/'),
    page.locator('#submit').click(),
  ]);
  return authorize;
}

async function appCookies() {
  return context.cookies(appOrigin);
}

async function shot(name) {
  const file = path.join(artifacts, `${name}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true });
    return path.relative(process.cwd(), file);
  } catch (err) {
    log(`screenshot ${name} failed: ${err.message}`);
    return null;
  }
}

// --- the walk ---------------------------------------------------------------------------------

const steps = [
  {
    name: 'open_app',
    needs: [],
    async run() {
      await page.goto(appUrl.href);
      expect((await page.title()) === 'Data Fetcher', `page title is ${JSON.stringify(await page.title())}`);
      expect((await text('h1')) === 'Data Fetcher', 'no "Data Fetcher" heading');
      const who = await sessionShown();
      expect(who === 'Not signed in', `#who says ${JSON.stringify(who)}`);
      expect(await page.locator('#logout').isDisabled(), 'Logout is enabled while signed out');
      return `#who: ${who}`;
    },
  },
  {
    name: 'get_data_signed_out',
    needs: ['open_app'],
    async run() {
      const response = await getData();
      expect(response.status() === 401, `GET /private/api/items answered ${response.status()}`);
      expect(await visible('#error'), 'the error box is not shown');
      expect(!(await visible('#result')), 'a result is shown');
      const error = await text('#error');
      expect(error.includes('401'), `the error box does not show the status: ${error}`);
      expect(error.includes('unauthenticated'), `the error box does not say unauthenticated: ${error}`);
      return `#error: ${error.replace(/\s+/g, ' ')}`;
    },
  },
  {
    name: 'login',
    needs: ['open_app'],
    async run() {
      state.idpOrigin = (await signInAtIdp('#login', '03a-idp-login-form')).origin;
      const cookies = await appCookies();
      const session = cookies.find((c) => c.name === SESSION_COOKIE);
      expect(session, `no ${SESSION_COOKIE} cookie after the login (cookies: ${cookies.map((c) => c.name)})`);
      expect(session.httpOnly && session.secure && session.sameSite === 'Lax',
        `the session cookie is not HttpOnly+Secure+SameSite=Lax: ${JSON.stringify({ ...session, value: '…' })}`);
      expect(!cookies.some((c) => c.name.includes('.tx.')), 'a login transaction cookie is left');
      return `signed in at ${state.idpOrigin}, back on ${page.url()}; app cookies: ${cookies.map((c) => c.name).join(', ')}`;
    },
  },
  {
    name: 'signed_in_shown',
    needs: ['login'],
    async run() {
      const who = await sessionShown();
      expect(who.startsWith('Signed in as '), `#who says ${JSON.stringify(who)}`);
      expect(await page.locator('#logout').isEnabled(), 'Logout is disabled while signed in');
      const session = await page.evaluate(async () => {
        const r = await fetch('/private/session', { credentials: 'include', headers: { 'X-CSRF': '1' } });
        return { status: r.status, body: await r.text() };
      });
      expect(session.status === 200, `GET /private/session answered ${session.status}`);
      const body = JSON.parse(session.body);
      expect(typeof body.sub === 'string' && body.sub, 'no sub in the session');
      expect(typeof body.claims === 'object' && body.claims, 'no claims in the session');
      expect(Number.isInteger(body.session_expires_at), 'no session_expires_at');
      expect(Number.isInteger(body.access_token_expires_at), 'no access_token_expires_at');
      expect(/^\/private\/logout\?sid=[^&]+$/.test(body.logout_url ?? ''), `logout_url is ${body.logout_url}`);
      state.session = body;
      return `#who: ${who}`;
    },
  },
  {
    name: 'get_data_signed_in',
    needs: ['login'],
    async run() {
      const response = await getData();
      expect(response.status() === 200, `GET /private/api/items answered ${response.status()}`);
      expect(await visible('#result'), 'no result shown');
      expect(!(await visible('#error')), 'the error box is shown');
      const data = JSON.parse(await text('#result'));
      expect(Array.isArray(data.items) && data.items.length === 3, 'not 3 items');
      expect(data.seen?.authorization === true, `seen.authorization is ${data.seen?.authorization}`);
      state.seen = data.seen;
      return `items: ${data.items.map((i) => i.name).join(', ')}; seen: ${JSON.stringify(data.seen)}`;
    },
  },
  {
    name: 'claim_headers',
    needs: ['get_data_signed_in'],
    async run() {
      const { sub, email } = state.seen;
      expect(typeof sub === 'string' && sub !== '', `the API saw no x-user-sub (seen.sub ${sub})`);
      expect(typeof email === 'string' && email.includes('@'), `the API saw no x-user-email (seen.email ${email})`);
      if (state.session) {
        expect(sub === state.session.sub, 'x-user-sub is not the session\'s sub');
        expect(email === state.session.claims.email, 'x-user-email is not the session\'s email');
      }
      return `x-user-sub: ${sub}, x-user-email: ${email}`;
    },
  },
  {
    name: 'no_token_visible_to_scripts',
    needs: ['login'],
    async run() {
      const seen = await page.evaluate(() => {
        const storage = (s) => Object.fromEntries(Array.from({ length: s.length }, (_, i) => [s.key(i), s.getItem(s.key(i))]));
        return { cookie: document.cookie, local: storage(localStorage), session: storage(sessionStorage) };
      });
      expect(!seen.cookie.includes(SESSION_COOKIE), 'document.cookie shows the session cookie (not HttpOnly)');
      expect(!seen.cookie.includes('eyJ') && !JWT_RE.test(seen.cookie), 'document.cookie holds a token-looking value');
      for (const [where, entries] of [['localStorage', seen.local], ['sessionStorage', seen.session]]) {
        for (const [key, value] of Object.entries(entries)) {
          expect(!JWT_RE.test(value) && !TOKEN_KEY_RE.test(value) && !/token/i.test(key),
            `${where}[${JSON.stringify(key)}] looks like a token`);
        }
      }
      const hidden = (await appCookies()).some((c) => c.name === SESSION_COOKIE && c.httpOnly);
      expect(hidden, 'the browser holds no HttpOnly session cookie');
      return `document.cookie: ${JSON.stringify(seen.cookie)}; localStorage keys: ${Object.keys(seen.local).length}; `
        + `sessionStorage keys: ${Object.keys(seen.session).length}; the session cookie exists, HttpOnly`;
    },
  },
  {
    name: 'sensitive_step_up',
    needs: ['login'],
    async run() {
      // The sensitive API wants a stronger login: the BFF answers 401 step_up_required with a
      // login link (read here too: the page leaves for the IdP as soon as it has read it, before
      // the response scan below can), which the page follows to the IdP and back.
      const challenge = await page.evaluate(async () => {
        const r = await fetch('/private/api/sensitive', { credentials: 'include', headers: { 'X-CSRF': '1' } });
        return { status: r.status, body: await r.text() };
      });
      const asked = JSON.parse(challenge.body);
      expect(challenge.status === 401 && asked.error === 'step_up_required' && asked.login,
        `GET /private/api/sensitive answered ${challenge.status} ${challenge.body.slice(0, 200)}`);
      const authorize = await signInAtIdp('#sensitive', '08a-idp-step-up-form');
      await sessionShown();
      const [response] = await Promise.all([
        page.waitForResponse((r) => r.url() === new URL('/private/api/sensitive', appOrigin).href),
        page.locator('#sensitive').click(),
      ]);
      expect(response.status() === 200, `GET /private/api/sensitive answered ${response.status()} after the step-up`);
      await page.locator('#result-panel:not([hidden])').waitFor();
      const data = JSON.parse(await text('#result'));
      expect(typeof data.approved === 'string', `the sensitive answer is ${JSON.stringify(data)}`);
      const acr = await page.evaluate(async () => {
        const r = await fetch('/private/session', { credentials: 'include', headers: { 'X-CSRF': '1' } });
        return (await r.json()).acr;
      });
      expect(acr === 'urn:example:mfa', `the session's acr is ${acr}`);
      return `step-up at the IdP with acr_values=${authorize.searchParams.get('acr_values')}; `
        + `then GET /private/api/sensitive: 200; session acr ${acr}`;
    },
  },
  {
    name: 'csrf_header_required',
    needs: ['login'],
    async run() {
      const r = await page.evaluate(async () => {
        const res = await fetch('/private/api/items', { credentials: 'include' });
        return { status: res.status, body: await res.text() };
      });
      expect(r.status === 403, `a fetch without X-CSRF answered ${r.status}`);
      let error;
      try {
        ({ error } = JSON.parse(r.body));
      } catch {
        error = undefined;
      }
      expect(error === 'csrf', `the 403 body is not {"error":"csrf"}: ${r.body.slice(0, 200)}`);
      return 'fetch without X-CSRF: 403 {"error":"csrf"}';
    },
  },
  {
    name: 'logout',
    needs: ['signed_in_shown'],
    async run() {
      const endSession = page.waitForRequest((r) => new URL(r.url()).origin !== appOrigin);
      await Promise.all([
        page.waitForURL((u) => u.origin !== appOrigin),
        page.locator('#logout').click(),
      ]);
      const params = new URL((await endSession).url()).searchParams;
      // The IdP asks "Sign out?"; its confirm button is button#logout.
      await page.locator('button#logout').waitFor();
      expect(!onApp(), 'the confirm page is not the IdP\'s');
      state.extraShots = [await shot('10a-idp-logout-confirm')];
      await Promise.all([
        page.waitForURL((u) => u.origin === appOrigin),
        page.locator('button#logout').click(),
      ]);
      const who = await sessionShown();
      expect(who === 'Not signed in', `#who says ${JSON.stringify(who)} after the logout`);
      const left = (await appCookies()).map((c) => c.name).filter((n) => n.startsWith(SESSION_COOKIE));
      expect(left.length === 0, `the filter's cookies are still there: ${left}`);
      const sent = ['id_token_hint', 'post_logout_redirect_uri', 'client_id'].filter((p) => params.has(p));
      return `end_session with ${sent.join(', ')} (post_logout_redirect_uri ${params.get('post_logout_redirect_uri')}); `
        + `back on ${page.url()}; #who: ${who}`;
    },
  },
  {
    name: 'get_data_after_logout',
    needs: ['logout'],
    async run() {
      const response = await getData();
      expect(response.status() === 401, `GET /private/api/items answered ${response.status()}`);
      const error = await text('#error');
      expect(error.includes('401') && error.includes('unauthenticated'), `#error: ${error}`);
      return `#error: ${error.replace(/\s+/g, ' ')}`;
    },
  },
  {
    name: 'no_token_in_any_response',
    needs: [],
    async run() {
      await settleBodies(5000);
      const found = [];
      for (const r of responses) {
        if (r.body === null) continue;
        if (TOKEN_KEY_RE.test(r.body)) found.push(`${r.url} (a token key)`);
        if (JWT_RE.test(r.body)) found.push(`${r.url} (a JWT)`);
      }
      expect(found.length === 0, `token-looking content in: ${found.join('; ')}`);
      const count = (read) => responses.filter((r) => r.read === read).length;
      const fromApi = responses.filter((r) => r.read === 'ok' && r.url.startsWith(`${appOrigin}/private/`)).length;
      // Every fetch the app made must have been read: those are the bodies its scripts see.
      const missed = responses.filter((r) => r.read !== 'ok' && r.read !== 'redirect'
        && r.url.startsWith(`${appOrigin}/private/`) && !r.url.includes('/private/login')
        // The page left for the step-up login right after reading this one; the step read the
        // same answer itself (and it is scanned).
        && !(r.step === 'sensitive_step_up' && r.status === 401 && r.url.endsWith('/private/api/sensitive')));
      expect(missed.length === 0, `unread API bodies: ${missed.map((r) => `${r.url} ${r.status} ${r.step} ${r.read}`)}`);
      expect(fromApi > 0, 'no API response body was read');
      const unread = responses.filter((r) => r.read === 'unreadable' || r.read === 'pending');
      return `${count('ok')} bodies scanned (${fromApi} from ${appOrigin}/private/), ${count('redirect')} redirects, `
        + `${unread.length} documents left before their body could be read`
        + (unread.length ? ` (${[...new Set(unread.map((r) => new URL(r.url).pathname))].join(', ')})` : '');
    },
  },
  {
    name: 'stayed_on_loopback',
    needs: [],
    async run() {
      expect(offLoopback.length === 0, `requests off this machine (blocked): ${[...new Set(offLoopback)]}`);
      expect(pageErrors.length === 0, `script errors: ${pageErrors.join('; ')}`);
      return 'every request went to localhost/127.0.0.1; no script or CSP errors';
    },
  },
];

const results = [];
const passed = new Set();
for (const [index, step] of steps.entries()) {
  const unmet = step.needs.filter((n) => !passed.has(n));
  const result = { name: step.name, status: 'skip', detail: '', ms: 0, screenshot: null };
  if (unmet.length) {
    result.detail = `needs ${unmet.join(', ')}`;
    results.push(result);
    log(`${step.name}: skip (${result.detail})`);
    continue;
  }
  const t0 = Date.now();
  state.extraShots = [];
  state.current = step.name;
  try {
    result.detail = await step.run();
    result.status = 'pass';
    passed.add(step.name);
  } catch (err) {
    result.status = 'fail';
    result.detail = err instanceof CheckFailed ? err.message : `${err.name}: ${err.message.split('\n')[0]}`;
  }
  result.ms = Date.now() - t0;
  result.screenshot = await shot(`${String(index + 1).padStart(2, '0')}-${step.name}`);
  const extras = (state.extraShots ?? []).filter(Boolean);
  if (extras.length) result.extra_screenshots = extras;
  results.push(result);
  log(`${step.name}: ${result.status} (${result.ms} ms) ${result.detail}`);
}

await context.close();

const summary = {
  ok: results.every((r) => r.status === 'pass'),
  app: appUrl.href,
  browser: browserVersion,
  steps: results,
  passed: results.filter((r) => r.status === 'pass').map((r) => r.name),
  failed: results.filter((r) => r.status === 'fail').map((r) => r.name),
  skipped: results.filter((r) => r.status === 'skip').map((r) => r.name),
  responses_seen: responses.length,
  jwt_in_request_urls: [...jwtInUrls],
};
fs.writeFileSync(path.join(artifacts, 'results.json'), `${JSON.stringify(summary, null, 1)}\n`);
process.stdout.write(`${JSON.stringify(summary)}\n`);
process.exit(summary.ok ? 0 : 1);
