// The OpenID Provider the integration tests and the demo log in against: `oidc-provider`
// (https://github.com/panva/node-oidc-provider) with one confidential client, two users, and
// custom login pages (dev interactions are off). Listens on 127.0.0.1 only, over plain http.
//
// Users (both get the same implicit consent and the same scope -> claim mapping):
//   alice / wonderland  (IDP_USER / IDP_PASSWORD rename her) sub alice-sub-0001, small claims
//   bob / builder       sub bob-sub-0002, ~250 `groups`, a long `profile` URL and `address`:
//                       his ID token payload is ~8 KB, so a session that keeps it (or just
//                       its claims) needs more than one 4 KB cookie.
//
// Configuration (environment; everything but IDP_PORT and IDP_REDIRECT_URIS has a default):
//   IDP_PORT                       port to listen on (required; the harness picks a free one)
//   IDP_HOST                       address to listen on, default 127.0.0.1
//   IDP_ISSUER                     default http://127.0.0.1:${IDP_PORT}
//   IDP_CLIENT_ID                  default bff
//   IDP_CLIENT_SECRET              default bff-secret
//   IDP_REDIRECT_URIS              comma-separated (required)
//   IDP_POST_LOGOUT_REDIRECT_URIS  comma-separated (optional)
//   IDP_ID_TOKEN_ALG               RS256 (default), PS256, ES256 or EdDSA (Ed25519)
//   IDP_ACCESS_TOKEN_TTL           seconds, default 3600
//   IDP_ID_TOKEN_TTL               seconds, default 3600
//   IDP_REFRESH_TOKEN_TTL          seconds, default 86400
//   IDP_RESOURCES                  comma-separated RFC 8707 resource indicators it serves: an
//                                  access token asked for one of them is a JWT (RS256, the
//                                  provider's keys) with `aud` = the resource and scope
//                                  `api:read`; any other `resource` is invalid_target
//   IDP_EXTRA_CLIENTS              optional JSON array of more clients' metadata, registered as
//                                  given (e.g. a client-credentials-only "mobile app" whose
//                                  tokens a bearer test sends, or a second SPA's client)
//   IDP_BACKCHANNEL_LOGOUT_URI     optional: the main client's backchannel_logout_uri (with
//                                  backchannel_logout_session_required, so ID tokens carry
//                                  `sid`); when the user's session here ends, a logout token
//                                  is posted there (OIDC Back-Channel Logout 1.0)
//   IDP_CLIENT_AUTH                the main client's token_endpoint_auth_method: client_secret_basic
//                                  (default) or private_key_jwt (RFC 7523: the client signs an
//                                  assertion with its own key, found at IDP_CLIENT_JWKS_URI), or
//                                  tls_client_auth / self_signed_tls_client_auth (RFC 8705: the
//                                  client's TLS certificate, on the IDP_MTLS_PORT listener)
//   IDP_MTLS_PORT                  with a tls_* client: a second listener, https, asking every
//                                  client for a certificate (verified against IDP_MTLS_CA, not
//                                  required: an anonymous client is refused by the token
//                                  endpoint, not by TLS); IDP_MTLS_CERT / IDP_MTLS_KEY are its
//                                  own certificate and key (PEM files). It serves the same
//                                  provider; the issuer and every endpoint stay on IDP_PORT,
//                                  and discovery announces the token, revocation and PAR
//                                  endpoints on the https listener as mtls_endpoint_aliases
//                                  (RFC 8705 §5)
//   IDP_CLIENT_CERT_SAN_DNS        with tls_client_auth: the dNSName the client's certificate
//                                  must carry (tls_client_auth_san_dns)
//   IDP_CLIENT_CERT                with self_signed_tls_client_auth: the client's certificate
//                                  (a PEM file), registered as is (a JWK with x5c)
//   IDP_CLIENT_JWKS_URI            with private_key_jwt: where the client's public keys are
//                                  (the filter serves them at its jwks_path), read when needed;
//                                  with IDP_ID_TOKEN_ENCRYPTION, where its encryption keys are
//   IDP_ID_TOKEN_ENCRYPTION        optional "alg,enc": the main client's
//                                  id_token_encrypted_response_alg and _enc (OIDC Core §10.2);
//                                  ID tokens (login and refresh) are then encrypted to the
//                                  client's key from IDP_CLIENT_JWKS_URI ("dir" uses the secret)
//   IDP_PAR                        pushed authorization requests (RFC 9126): "on" (default: the
//                                  endpoint is announced, its use optional), "required" (every
//                                  authorization request must be pushed), or "off" (no endpoint)
//   IDP_DPOP                       DPoP (RFC 9449): "optional" (default, oidc-provider's own: a
//                                  token request with a proof gets a DPoP-bound token), "required"
//                                  (the main client's tokens must be bound:
//                                  dpop_bound_access_tokens), "nonce" (required, and every proof
//                                  must carry this IdP's nonce: a first request without it gets
//                                  400 use_dpop_nonce with a DPoP-Nonce header), or "off" (proofs
//                                  are ignored: Bearer tokens)
//   IDP_CLIENT_CREDENTIALS_TTL     optional JSON object: client id -> lifetime in seconds of its
//                                  client-credentials tokens (others: IDP_ACCESS_TOKEN_TTL)
//   The main client may also use the client-credentials grant (RFC 6749 §4.4); with a
//   `resource` of IDP_RESOURCES its token is a JWT with sub = the client id.
//   acr: a login is `urn:example:pwd`, or `urn:example:mfa` when the authorization request's
//   acr_values asks for it (this IdP's stand-in for a second factor: the same form); a session
//   whose acr is not among the acr_values asked for is shown the login form again (step-up).
//   max_age is honoured as OIDC says (an older login signs in again).
//   IDP_USER / IDP_PASSWORD        default alice / wonderland (the first user; bob is fixed,
//                                  and absent if IDP_USER takes his name)
//   IDP_KEY_FILE                   optional path of a private JWKS (JSON {"keys": [...]}). If the
//                                  file exists its keys are used as they are; if not, keys are
//                                  generated and written there (mode 0600), so an IdP restarted
//                                  with the same file (and port) signs with the same keys. Every
//                                  key is published; of several that fit an alg, the first one
//                                  listed signs (keys that name their `alg` before keys that do
//                                  not). Without it, keys are fresh at every start.
//   IDP_KEY_ID_PREFIX              optional: generated keys get the kids `<prefix>rs256`,
//                                  `<prefix>ps256`, `<prefix>es256`, `<prefix>eddsa` (predictable
//                                  and distinct per prefix); without it `rs256-<random hex>`...
//
// Prints exactly one line `IDP READY <issuer>` on stdout once listening; exits on SIGTERM/SIGINT.
//
// State: sessions, grants, codes, access and refresh tokens live in this process's memory
// only (an in-memory adapter, see `adapter` below) and are all lost when it exits; a restarted
// IdP (even with IDP_KEY_FILE) answers every earlier refresh token with invalid_grant.
//
// Test hooks (the only non-OIDC routes besides the login pages):
//   GET /test/stats  -> {"token_requests": N, "refresh_requests": M, "revocations": K, ...}
//     token_requests   POSTs to the token endpoint with grant_type=authorization_code
//     refresh_requests POSTs to the token endpoint with grant_type=refresh_token
//     revocations      POSTs to the revocation endpoint
//     token_endpoint_calls  every POST to the token endpoint, whatever its grant_type
//     client_credentials_requests  ... with grant_type=client_credentials
//     backchannel_ok / backchannel_failed  back-channel logouts posted, answered 200 or not
//   Failed requests count too: they are counted by a middleware before the provider answers.
//   IDP_REFRESH_DELAY_MS=N holds every refresh answer N ms after the refresh token was rotated.
//   POST /test/hold-token-requests?count=N&ms=M -> {"held": N}
//     the next N POSTs to the token endpoint wait up to M ms before the provider sees them;
//     one whose client went away meanwhile (its Envoy was killed) is dropped unseen, as if it
//     had never arrived (counted as token_requests_dropped, in no grant's count).
//   POST /test/revoke-all -> {"revoked_grants": N}
//     revokes every grant issued so far with all its codes, access and refresh tokens, so the
//     next refresh of any of them is invalid_grant. IdP login sessions are kept (a new
//     authorization request signs in without the form and gets a fresh grant). Not counted.
//
// One deliberate strictness beyond oidc-provider: an `Authorization: Basic` header whose
// base64 is not canonical (RFC 4648 §4, padded) is refused with 400 invalid_request, so a
// client that drops the padding is caught here rather than by a stricter IdP in production.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';

import Provider, { errors, interactionPolicy } from 'oidc-provider';
// oidc-provider's own in-memory adapter and cache, given a store that is not capped at the
// default ~1000-2000 entries (with which a long test module could see old grants evicted).
// Deep imports: the package has no "exports" map, and its version is pinned.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';

// --- configuration -------------------------------------------------------------------------

function env(name, fallback) {
  const value = process.env[name];
  return value === undefined || value === '' ? fallback : value;
}

function envList(name) {
  return env(name, '').split(',').map((s) => s.trim()).filter(Boolean);
}

function envSeconds(name, fallback) {
  const value = Number(env(name, String(fallback)));
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive integer number of seconds`);
  }
  return value;
}

function fail(message) {
  process.stderr.write(`idp: ${message}\n`);
  process.exit(2);
}

const PORT = Number(env('IDP_PORT', ''));
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) fail('IDP_PORT is required');
const HOST = env('IDP_HOST', '127.0.0.1');
const ISSUER = env('IDP_ISSUER', `http://127.0.0.1:${PORT}`);
const CLIENT_ID = env('IDP_CLIENT_ID', 'bff');
const CLIENT_SECRET = env('IDP_CLIENT_SECRET', 'bff-secret');
const REDIRECT_URIS = envList('IDP_REDIRECT_URIS');
if (REDIRECT_URIS.length === 0) fail('IDP_REDIRECT_URIS is required');
const POST_LOGOUT_REDIRECT_URIS = envList('IDP_POST_LOGOUT_REDIRECT_URIS');
const RESOURCES = envList('IDP_RESOURCES');
function envJson(name, fallback) {
  const raw = env(name, '');
  if (raw === '') return fallback;
  try {
    return JSON.parse(raw);
  } catch (e) {
    fail(`${name} is not JSON: ${e.message}`);
  }
}
const EXTRA_CLIENTS = envJson('IDP_EXTRA_CLIENTS', []);
const DPOP = env('IDP_DPOP', 'optional');
if (!['optional', 'required', 'nonce', 'off'].includes(DPOP)) {
  fail('IDP_DPOP must be optional, required, nonce or off');
}
const PAR = env('IDP_PAR', 'on');
if (!['on', 'required', 'off'].includes(PAR)) fail('IDP_PAR must be on, required or off');
const CLIENT_AUTH = env('IDP_CLIENT_AUTH', 'client_secret_basic');
const CLIENT_AUTHS = ['client_secret_basic', 'private_key_jwt', 'tls_client_auth',
  'self_signed_tls_client_auth'];
if (!CLIENT_AUTHS.includes(CLIENT_AUTH)) fail(`IDP_CLIENT_AUTH must be one of ${CLIENT_AUTHS.join(', ')}`);
const CLIENT_JWKS_URI = env('IDP_CLIENT_JWKS_URI', '');
const [ENC_ALG, ENC_ENC] = env('IDP_ID_TOKEN_ENCRYPTION', '').split(',');
if (ENC_ALG && !ENC_ENC) fail('IDP_ID_TOKEN_ENCRYPTION is "alg,enc"');
if (ENC_ALG && ENC_ALG !== 'dir' && !CLIENT_JWKS_URI) fail('IDP_ID_TOKEN_ENCRYPTION needs IDP_CLIENT_JWKS_URI');
if (CLIENT_AUTH === 'private_key_jwt' && !CLIENT_JWKS_URI) fail('private_key_jwt needs IDP_CLIENT_JWKS_URI');
const MTLS = CLIENT_AUTH.endsWith('tls_client_auth');
const MTLS_PORT = Number(env('IDP_MTLS_PORT', '0'));
if (MTLS && !(Number.isInteger(MTLS_PORT) && MTLS_PORT > 0)) fail(`${CLIENT_AUTH} needs IDP_MTLS_PORT`);

function readFile(name) {
  const file = env(name, '');
  if (!file) fail(`${CLIENT_AUTH} needs ${name}`);
  return fs.readFileSync(file);
}

// The main client's credentials, as oidc-provider registers them.
function clientCredentials() {
  switch (CLIENT_AUTH) {
    case 'client_secret_basic':
      return { client_secret: CLIENT_SECRET, ...(CLIENT_JWKS_URI ? { jwks_uri: CLIENT_JWKS_URI } : {}) };
    case 'private_key_jwt':
      return { jwks_uri: CLIENT_JWKS_URI };
    case 'tls_client_auth':
      return { tls_client_auth_san_dns: env('IDP_CLIENT_CERT_SAN_DNS', '') || fail('tls_client_auth needs IDP_CLIENT_CERT_SAN_DNS') };
    default: {
      const cert = new crypto.X509Certificate(readFile('IDP_CLIENT_CERT'));
      const key = { ...cert.publicKey.export({ format: 'jwk' }), x5c: [cert.raw.toString('base64')] };
      return { jwks: { keys: [key] } };
    }
  }
}

// RFC 8705 §2: the certificate the client showed on the https listener (none on plain http).
const mtlsFeature = {
  enabled: MTLS,
  tlsClientAuth: true,
  selfSignedTlsClientAuth: true,
  getCertificate: (ctx) => ctx.req.socket.getPeerX509Certificate?.(),
  certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
  certificateSubjectMatches(ctx, property, expected) {
    const names = ctx.req.socket.getPeerX509Certificate?.()?.subjectAltName?.split(', ') ?? [];
    return property === 'tls_client_auth_san_dns' && names.includes(`DNS:${expected}`);
  },
};
const mtlsOrigin = `https://127.0.0.1:${MTLS_PORT}`;
const BACKCHANNEL_LOGOUT_URI = env('IDP_BACKCHANNEL_LOGOUT_URI', '');
const CLIENT_CREDENTIALS_TTL = envJson('IDP_CLIENT_CREDENTIALS_TTL', {});
const ACR_PWD = 'urn:example:pwd';
const ACR_MFA = 'urn:example:mfa';

// oidc-provider treats acr_values as voluntary: a session already signed in at a lower acr
// would be answered without a login. A step-up needs the login form again, so the login prompt
// gets one more check (the `oidc.result?.login` guard, as oidc-provider's own checks have it,
// keeps a login just finished from being asked for again).
function stepUpPolicy() {
  const { Check, base } = interactionPolicy;
  const policy = base();
  policy.get('login').checks.add(new Check('acr_unmet', 'requested ACR not met by the session',
    'login_required', (ctx) => {
      const { oidc } = ctx;
      const wanted = String(oidc.params.acr_values ?? '').split(' ').filter(Boolean);
      if (!wanted.length || !oidc.session.accountId || oidc.result?.login) {
        return Check.NO_NEED_TO_PROMPT;
      }
      return wanted.includes(oidc.acr) ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT;
    }));
  return policy;
}
const ID_TOKEN_ALGS = ['RS256', 'PS256', 'ES256', 'EdDSA'];
const ID_TOKEN_ALG = env('IDP_ID_TOKEN_ALG', 'RS256');
if (!ID_TOKEN_ALGS.includes(ID_TOKEN_ALG)) fail('IDP_ID_TOKEN_ALG must be RS256, PS256, ES256 or EdDSA');
const KEY_FILE = env('IDP_KEY_FILE', '');
const KEY_ID_PREFIX = env('IDP_KEY_ID_PREFIX', '');
let ACCESS_TOKEN_TTL;
let ID_TOKEN_TTL;
let REFRESH_TOKEN_TTL;
try {
  ACCESS_TOKEN_TTL = envSeconds('IDP_ACCESS_TOKEN_TTL', 3600);
  ID_TOKEN_TTL = envSeconds('IDP_ID_TOKEN_TTL', 3600);
  REFRESH_TOKEN_TTL = envSeconds('IDP_REFRESH_TOKEN_TTL', 86400);
} catch (err) {
  fail(err.message);
}
// Test hook: a refresh is answered this long after the provider has rotated the refresh token
// (0: at once), so a test can drop the client while the IdP already moved on.
const REFRESH_DELAY_MS = Number(env('IDP_REFRESH_DELAY_MS', '0'));
if (!Number.isInteger(REFRESH_DELAY_MS) || REFRESH_DELAY_MS < 0) fail('IDP_REFRESH_DELAY_MS must be a whole number of milliseconds');
const USER = env('IDP_USER', 'alice');
const PASSWORD = env('IDP_PASSWORD', 'wonderland');

// The test users, by login name. `sub`s are stable across restarts so tests can assert on them.
const ALICE = {
  sub: `${USER}-sub-0001`,
  name: USER === 'alice' ? 'Alice Liddell' : USER,
  preferred_username: USER,
  email: `${USER}@example.test`,
  email_verified: true,
  groups: ['staff', 'beta'],
};

// Bob belongs to everything: his claims make an ID token payload of ~8 KB (tests/test_idp.py
// pins the range). The address has a newline and non-ASCII letters on purpose.
const BOB = {
  sub: 'bob-sub-0002',
  name: 'Bob the Builder',
  preferred_username: 'bob',
  email: 'bob@example.test',
  email_verified: true,
  groups: Array.from({ length: 250 }, (_, i) => `team-${i + 1}-readers`),
  profile: `https://people.example.test/profiles/bob-sub-0002?view=full&projects=${
    Array.from({ length: 300 }, (_, i) => `site-${i + 1}`).join(',')}`,
  address: {
    formatted: 'Bob the Builder\nSite Office 7, Yard B, Baustraße 12-14\nSunflower Valley 4711\nDE',
    street_address: 'Site Office 7, Yard B, Baustraße 12-14 (deliveries via the north gate, '
      + 'ask for Wendy; Scoop, Muck, Dizzy, Roley and Lofty are parked behind the portacabin)',
    locality: 'Sunflower Valley',
    region: 'Bobsville District',
    postal_code: '4711',
    country: 'DE',
  },
};

const USERS = new Map([[USER, { password: PASSWORD, claims: ALICE }]]);
if (!USERS.has('bob')) USERS.set('bob', { password: 'builder', claims: BOB });
const ACCOUNTS = new Map([...USERS.values()].map(({ claims }) => [claims.sub, claims]));

// --- signing keys: one per algorithm so each JWK names its `alg` ------------------------------

function signingJwk(kid, alg, type, options) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

function generateJwks() {
  const run = crypto.randomBytes(4).toString('hex');
  const kid = (alg) => (KEY_ID_PREFIX ? `${KEY_ID_PREFIX}${alg.toLowerCase()}` : `${alg.toLowerCase()}-${run}`);
  return {
    keys: [
      // The first key of each algorithm signs; RS256 first so it is oidc-provider's default.
      signingJwk(kid('RS256'), 'RS256', 'rsa', { modulusLength: 2048 }),
      signingJwk(kid('PS256'), 'PS256', 'rsa', { modulusLength: 2048 }),
      signingJwk(kid('ES256'), 'ES256', 'ec', { namedCurve: 'P-256' }),
      signingJwk(kid('EdDSA'), 'EdDSA', 'ed25519'),
    ],
  };
}

// Whether a private JWK can sign ID tokens with `alg` (as oidc-provider selects keys).
function canSign(jwk, alg) {
  if (!jwk.d || (jwk.use !== undefined && jwk.use !== 'sig')) return false;
  if (jwk.alg !== undefined) return jwk.alg === alg;
  switch (alg) {
    case 'RS256': case 'PS256': return jwk.kty === 'RSA';
    case 'ES256': return jwk.kty === 'EC' && jwk.crv === 'P-256';
    case 'EdDSA': return jwk.kty === 'OKP' && jwk.crv === 'Ed25519';
    default: return false;
  }
}

function loadOrCreateJwks() {
  if (!KEY_FILE) return generateJwks();
  let text;
  try {
    text = fs.readFileSync(KEY_FILE, 'utf8');
  } catch (err) {
    if (err.code !== 'ENOENT') fail(`IDP_KEY_FILE ${KEY_FILE}: ${err.message}`);
    const fresh = generateJwks();
    // Write then rename, so a reader never sees half a file.
    const tmp = path.join(path.dirname(KEY_FILE), `.${path.basename(KEY_FILE)}.${process.pid}.tmp`);
    try {
      fs.writeFileSync(tmp, `${JSON.stringify(fresh, null, 1)}\n`, { mode: 0o600 });
      fs.renameSync(tmp, KEY_FILE);
    } catch (err2) {
      fail(`IDP_KEY_FILE ${KEY_FILE}: cannot write it: ${err2.message}`);
    }
    return fresh;
  }
  let loaded;
  try {
    loaded = JSON.parse(text);
  } catch (err) {
    fail(`IDP_KEY_FILE ${KEY_FILE}: not JSON: ${err.message}`);
  }
  if (!Array.isArray(loaded?.keys) || loaded.keys.length === 0) {
    fail(`IDP_KEY_FILE ${KEY_FILE}: expected {"keys": [private JWKs]}`);
  }
  if (!loaded.keys.some((jwk) => canSign(jwk, ID_TOKEN_ALG))) {
    fail(`IDP_KEY_FILE ${KEY_FILE}: no private key that can sign ${ID_TOKEN_ALG} (IDP_ID_TOKEN_ALG)`);
  }
  return { keys: loaded.keys };
}

const jwks = loadOrCreateJwks();

// --- small HTML helpers -------------------------------------------------------------------

function escapeHtml(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
${body}
</body>
</html>
`;
}

// --- the provider -------------------------------------------------------------------------

// Sessions, interactions, grants, codes and tokens: in this process's memory, never on disk.
// A restart loses them all (refresh tokens included); no IDP_* variable keeps them.
const STORE = new LRU({ maxSize: 1_000_000 });

const configuration = {
  clients: [
    {
      client_id: CLIENT_ID,
      ...clientCredentials(),
      client_name: `${CLIENT_ID} (BFF test client)`,
      redirect_uris: REDIRECT_URIS,
      post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      token_endpoint_auth_method: CLIENT_AUTH,
      ...(DPOP === 'required' || DPOP === 'nonce' ? { dpop_bound_access_tokens: true } : {}),
      id_token_signed_response_alg: ID_TOKEN_ALG,
      ...(ENC_ALG
        ? { id_token_encrypted_response_alg: ENC_ALG, id_token_encrypted_response_enc: ENC_ENC }
        : {}),
      ...(BACKCHANNEL_LOGOUT_URI
        ? { backchannel_logout_uri: BACKCHANNEL_LOGOUT_URI, backchannel_logout_session_required: true }
        : {}),
    },
    ...EXTRA_CLIENTS,
  ],
  jwks,
  // Sessions, grants and tokens: in STORE, this process's memory only (see the header).
  adapter: (name) => new MemoryAdapter(name, STORE),
  // Cookie signing keys for the provider's own session/interaction cookies. `secure` is set
  // only when the request is https (ctx.secure), so they work over plain http on 127.0.0.1.
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },

  responseTypes: ['code'],
  pkce: { required: () => true }, // oidc-provider 9 only implements S256
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', 'address'],
  claims: {
    openid: ['sub'],
    // `groups` and `address` also ride on `profile` so the default BFF scopes carry them (only
    // bob has an address and a `profile` URL; a claim the account lacks is simply absent).
    profile: ['name', 'preferred_username', 'profile', 'groups', 'address'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    address: ['address'],
  },
  // Put the scope claims into the ID token even in the code flow (the default keeps them for
  // userinfo only); the BFF reads its user claims from the validated ID token.
  conformIdTokenClaims: false,

  async findAccount(_ctx, sub) {
    const account = ACCOUNTS.get(sub);
    if (account === undefined) return undefined;
    return {
      accountId: sub,
      async claims() {
        return structuredClone(account);
      },
    };
  },

  // First-party client: consent is implicit. Every authorization request gets a grant that
  // covers exactly what it asks for, so the consent prompt never needs a page.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== oidc.session.accountId) {
      grant = new oidc.provider.Grant({
        clientId: oidc.client.clientId,
        accountId: oidc.session.accountId,
      });
    }
    const oidcScopes = [...oidc.requestParamOIDCScopes];
    if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
    const claims = [...oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    for (const [indicator, resourceServer] of Object.entries(oidc.resourceServers ?? {})) {
      const scopes = [...oidc.requestParamScopes].filter((s) => resourceServer.scopes.has(s));
      if (scopes.length) grant.addResourceScope(indicator, scopes.join(' '));
    }
    await grant.save();
    return grant;
  },

  // oidc-provider applies OIDC Core §11 to the letter: it drops offline_access from any
  // authorization request that lacks prompt=consent. Our client is first-party (consent is
  // implicit, see loadExistingGrant) and the BFF never sends prompt=consent, so put
  // offline_access back. An extraParams validator is the one hook that runs after that scope
  // check (lib/actions/authorization/index.js: checkScope ... checkExtraParams); it runs
  // whether or not its parameter is present. tests/test_idp.py asserts the outcome, so an
  // upgrade that moves the hook is caught there.
  extraParams: {
    async first_party_offline_access(ctx, _value, client) {
      if (!['authorization', 'pushed_authorization_request'].includes(ctx.oidc.route)) return;
      const raw = ctx.method === 'POST' ? ctx.oidc.body : ctx.query;
      const requested = String(raw?.scope ?? '').split(' ');
      const scopes = new Set(String(ctx.oidc.params.scope ?? '').split(' ').filter(Boolean));
      const codeFlow = String(ctx.oidc.params.response_type ?? '').split(' ').includes('code');
      if (requested.includes('offline_access') && !scopes.has('offline_access')
          && codeFlow && client.grantTypeAllowed('refresh_token')) {
        scopes.add('offline_access');
        ctx.oidc.params.scope = [...scopes].join(' ');
      }
    },
  },

  // A refresh token whenever offline_access was granted (the default, made explicit).
  async issueRefreshToken(_ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
  },
  // Rotate on every use; presenting a rotated (consumed) refresh token again revokes the grant.
  rotateRefreshToken: () => true,

  ttl: {
    AccessToken: () => ACCESS_TOKEN_TTL,
    ClientCredentials: (_ctx, _token, client) => CLIENT_CREDENTIALS_TTL[client.clientId] ?? ACCESS_TOKEN_TTL,
    AuthorizationCode: () => 60,
    IdToken: () => ID_TOKEN_TTL,
    RefreshToken: () => REFRESH_TOKEN_TTL,
    Interaction: () => 3600,
    Session: () => 14 * 24 * 3600,
    Grant: () => 14 * 24 * 3600,
  },

  acrValues: [ACR_PWD, ACR_MFA],
  interactions: {
    policy: stepUpPolicy(),
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  features: {
    devInteractions: { enabled: false },
    // RFC 8707. useGrantedResource stays false: a code exchange or refresh that leaves
    // `resource` out gets an opaque token for userinfo, so a client that forgets it is seen.
    resourceIndicators: {
      enabled: true,
      async getResourceServerInfo(_ctx, resource) {
        if (!RESOURCES.includes(resource)) throw new errors.InvalidTarget();
        return { scope: 'api:read', accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
      },
    },
    revocation: { enabled: true },
    dPoP: {
      enabled: DPOP !== 'off',
      ...(DPOP === 'nonce'
        ? { nonceSecret: crypto.randomBytes(32), requireNonce: () => true }
        : {}),
    },
    pushedAuthorizationRequests: {
      enabled: PAR !== 'off',
      requirePushedAuthorizationRequests: PAR === 'required',
    },
    clientCredentials: { enabled: true },
    mTLS: mtlsFeature,
    backchannelLogout: { enabled: true },
    encryption: { enabled: Boolean(ENC_ALG) },
    userinfo: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // Our own page: the confirm button sits inside the form so a scripted client can post
      // it as is; id="logout" for the browser test.
      async logoutSource(ctx, form) {
        const button = '<button id="logout" type="submit" name="logout" value="yes">Yes, sign me out</button>';
        ctx.body = page('Sign out', `<h1>Sign out of ${escapeHtml(ctx.host)}?</h1>\n${form.replace('</form>', `${button}</form>`)}`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<h1>Signed out</h1>');
      },
    },
  },

  clientBasedCORS: () => false,

  clientAuthMethods: ['client_secret_basic', 'client_secret_jwt', 'client_secret_post',
    'private_key_jwt', 'none', ...(MTLS ? ['tls_client_auth', 'self_signed_tls_client_auth'] : [])],

  ...(MTLS
    ? {
      discovery: {
        mtls_endpoint_aliases: {
          token_endpoint: `${mtlsOrigin}/token`,
          revocation_endpoint: `${mtlsOrigin}/token/revocation`,
          ...(PAR !== 'off' ? { pushed_authorization_request_endpoint: `${mtlsOrigin}/request` } : {}),
        },
      },
    }
    : {}),

  // oidc-provider refuses to call special-use addresses (its SSRF protection, a dispatcher it
  // adds to fetch), loopback included; the tests' back-channel logout endpoints are on
  // loopback, and this IdP only ever runs on loopback: call without that dispatcher.
  fetch: (url, options) => {
    const { dispatcher: _ssrf, ...rest } = options;
    return globalThis.fetch(url, rest);
  },

  async renderError(ctx, out) {
    ctx.type = 'html';
    const rows = Object.entries(out).map(([k, v]) => `<p><strong>${escapeHtml(k)}</strong>: ${escapeHtml(v)}</p>`);
    ctx.body = page('Error', `<h1>Error</h1>\n${rows.join('\n')}`);
  },
};

const provider = new Provider(ISSUER, configuration);
provider.proxy = false;

// --- test statistics and Basic-auth strictness (Koa middleware, outermost) ---------------

const stats = {
  token_requests: 0,
  refresh_requests: 0,
  revocations: 0,
  token_endpoint_calls: 0,
  client_credentials_requests: 0,
  backchannel_ok: 0,
  backchannel_failed: 0,
  token_requests_dropped: 0,
};
// The test hook's hold on the next token-endpoint POSTs.
const hold = { count: 0, ms: 0 };

// Waits up to `ms` for the request's client to go away; true if it did.
function clientLeftWithin(req, ms) {
  const socket = req.socket;
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(socket.destroyed), ms);
    socket.once('close', () => { clearTimeout(timer); resolve(true); });
  });
}
// Why a token, PAR or revocation request was refused, in the log (what a test failing on an
// invalid_request needs to see).
for (const event of ['grant.error', 'pushed_authorization_request.error', 'revocation.error',
  'authorization.error']) {
  provider.on(event, (_ctx, err) => {
    console.error(`${event}: ${err.error ?? err.name}: ${err.error_description ?? err.message}`);
  });
}
// Back-channel logouts this IdP posted: answered 200/204, or not.
provider.on('backchannel.success', () => { stats.backchannel_ok += 1; });
provider.on('backchannel.error', (_ctx, err) => {
  stats.backchannel_failed += 1;
  console.error(`backchannel logout failed: ${err.message}`);
});

const tokenPath = new URL(provider.urlFor('token')).pathname;
const revocationPath = new URL(provider.urlFor('revocation')).pathname;

provider.use(async (ctx, next) => {
  const isToken = ctx.method === 'POST' && ctx.path === tokenPath;
  const isRevocation = ctx.method === 'POST' && ctx.path === revocationPath;
  try {
    if (isToken || isRevocation) {
      const auth = ctx.get('authorization');
      const m = /^basic\s+(\S*)$/i.exec(auth);
      if (m && !/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(m[1])) {
        ctx.status = 400;
        ctx.set('cache-control', 'no-store');
        ctx.body = {
          error: 'invalid_request',
          error_description: 'Authorization: Basic credentials must be standard, padded base64 (RFC 7617, RFC 4648 section 4)',
        };
        return;
      }
    }
    if (isToken && hold.count > 0) {
      hold.count -= 1;
      if (await clientLeftWithin(ctx.req, hold.ms)) {
        stats.token_requests_dropped += 1;
        ctx.respond = false;
        return;
      }
    }
    await next();
    if (isToken && REFRESH_DELAY_MS > 0 && ctx.oidc?.params?.grant_type === 'refresh_token') {
      await new Promise((resolve) => setTimeout(resolve, REFRESH_DELAY_MS));
    }
  } finally {
    if (isToken) {
      stats.token_endpoint_calls += 1;
      // Parsed by the provider; a request it refused before parsing counts by total only.
      const grantType = ctx.oidc?.params?.grant_type ?? ctx.request.body?.grant_type;
      if (grantType === 'authorization_code') stats.token_requests += 1;
      if (grantType === 'refresh_token') stats.refresh_requests += 1;
      if (grantType === 'client_credentials') stats.client_credentials_requests += 1;
    }
    if (isRevocation) stats.revocations += 1;
  }
});

// --- revoking everything (test hook) --------------------------------------------------------

// Every grant saved since start (or since the last revoke-all), by id.
const grantIds = new Set();
provider.on('grant.saved', (grant) => grantIds.add(grant.jti));

async function revokeAll() {
  const ids = [...grantIds];
  grantIds.clear();
  for (const grantId of ids) {
    await Promise.all([
      provider.AccessToken.adapter.revokeByGrantId(grantId),
      provider.RefreshToken.adapter.revokeByGrantId(grantId),
      provider.AuthorizationCode.adapter.revokeByGrantId(grantId),
      provider.Grant.adapter.destroy(grantId),
    ]);
  }
  return ids.length;
}

// --- login interactions -------------------------------------------------------------------

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function sendHtml(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(html),
  });
  res.end(html);
}

async function clientLabel(clientId) {
  const client = await provider.Client.find(clientId);
  return client?.clientName || clientId;
}

function loginForm(uid, clientName, { error, login } = {}) {
  const message = error ? `<p id="error" role="alert">${escapeHtml(error)}</p>\n` : '';
  return page('Sign in', `<h1>Sign in to continue to ${escapeHtml(clientName)}</h1>
${message}<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
<label>Username <input name="login" id="login" value="${escapeHtml(login ?? '')}" autofocus></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="submit">Sign in</button>
</form>
<p><a href="/interaction/${escapeHtml(uid)}/abort">Cancel</a></p>`);
}

// Consent should never be prompted (see loadExistingGrant); if it is, grant it here too.
async function finishConsent(req, res, details) {
  const { prompt: { details: missing }, params, session } = details;
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  grant ??= new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Error', '<h1>Interaction mismatch</h1>'));
    return;
  }
  const clientName = await clientLabel(details.params.client_id);

  if (action === undefined && req.method === 'GET') {
    if (details.prompt.name === 'consent') {
      await finishConsent(req, res, details);
      return;
    }
    sendHtml(res, 200, loginForm(uid, clientName));
    return;
  }
  if (action === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const password = form.get('password') ?? '';
    const user = USERS.get(login);
    const ok = crypto.timingSafeEqual(
      crypto.createHash('sha256').update(password).digest(),
      crypto.createHash('sha256').update(user?.password ?? crypto.randomBytes(16)).digest(),
    ) && user !== undefined;
    if (!ok) {
      sendHtml(res, 200, loginForm(uid, clientName, { error: 'Invalid credentials', login }));
      return;
    }
    const mfa = String(details.params.acr_values ?? '').split(' ').includes(ACR_MFA);
    await provider.interactionFinished(req, res, {
      login: {
        accountId: user.claims.sub,
        acr: mfa ? ACR_MFA : ACR_PWD,
        amr: mfa ? ['pwd', 'otp'] : ['pwd'],
      },
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (action === 'abort' && req.method === 'GET') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  sendHtml(res, 405, page('Error', '<h1>Method not allowed</h1>'));
}

// --- HTTP front: our routes, then the provider ---------------------------------------------

const providerCallback = provider.callback();

// Room for long URLs: an end_session request with bob's ID token as id_token_hint is ~11 KB,
// close to Node's default 16 KB header limit once cookies are added.
async function handle(req, res) {
  const { pathname } = new URL(req.url, 'http://idp.invalid');
  try {
    if (req.method === 'GET' && pathname === '/test/stats') {
      const body = JSON.stringify(stats);
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(body);
      return;
    }
    if (req.method === 'POST' && pathname === '/test/hold-token-requests') {
      req.resume(); // any body is ignored
      const query = new URL(req.url, 'http://idp.invalid').searchParams;
      hold.count = Number(query.get('count') ?? '1');
      hold.ms = Number(query.get('ms') ?? '10000');
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify({ held: hold.count }));
      return;
    }
    if (req.method === 'POST' && pathname === '/test/revoke-all') {
      req.resume(); // any body is ignored
      const body = JSON.stringify({ revoked_grants: await revokeAll() });
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(body);
      return;
    }
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/.exec(pathname);
    if (m) {
      await interaction(req, res, m[1], m[2]);
      return;
    }
    providerCallback(req, res);
  } catch (err) {
    // Typically an expired or missing interaction (its cookie is gone): say so, don't crash.
    process.stderr.write(`idp: ${req.method} ${pathname}: ${err?.name}: ${err?.message}\n`);
    if (!res.headersSent) {
      const status = err?.statusCode ?? err?.status ?? 500;
      sendHtml(res, status >= 400 && status < 600 ? status : 500,
        page('Error', `<h1>Error</h1><p>${escapeHtml(err?.error_description ?? err?.message ?? 'error')}</p>`));
    } else {
      res.destroy();
    }
  }
}

const servers = [http.createServer({ maxHeaderSize: 64 * 1024 }, handle)];
if (MTLS) {
  servers.push(https.createServer({
    maxHeaderSize: 64 * 1024,
    cert: readFile('IDP_MTLS_CERT'),
    key: readFile('IDP_MTLS_KEY'),
    ...(env('IDP_MTLS_CA', '') ? { ca: readFile('IDP_MTLS_CA') } : {}),
    requestCert: true,
    rejectUnauthorized: false,
  }, handle));
}
let listening = 0;
servers.forEach((server, i) => {
  server.listen(i === 0 ? PORT : MTLS_PORT, HOST, () => {
    listening += 1;
    if (listening === servers.length) process.stdout.write(`IDP READY ${ISSUER}\n`);
  });
});

function shutdown() {
  let open = servers.length;
  for (const server of servers) {
    server.close(() => {
      open -= 1;
      if (open === 0) process.exit(0);
    });
    server.closeAllConnections();
  }
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
