// A real OpenID provider for keyturn's tests: the certified `oidc-provider`, on 127.0.0.1.
//
//   node oidc-provider.mjs [PORT]      (PORT, or $PORT; 0 or none: any free port)
//
// Clients come as JSON in $OIDC_CLIENTS, an array of oidc-provider client metadata, e.g.
//   [{"client_id":"keyturn-console","client_secret":"s","redirect_uris":["http://127.0.0.1:8470/auth/callback"]}]
// (`id_token_signed_response_alg` picks RS256 or ES256; both keys are in the JWKS).
// PKCE is required and consent is granted without asking, so a browser goes authorize →
// login form → callback. The login form checks the accounts below (all with PASSWORD).
// Prints `ready <issuer>` on stdout once listening.

import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const PASSWORD = 'correct horse battery staple';
const ACCOUNTS = {
  // As Entra ID names her: her tenant (tid) and object id (oid), which are her Teams account's.
  'alice@example.com': {
    sub: 'u-alice', name: 'Alice Approver', groups: ['keyturn-approvers'],
    tid: '72f988bf-86f1-41af-91ab-2d7cd011db47', oid: '0000a11c-0000-0000-0000-00000000a11c',
  },
  'bob@example.com': {
    sub: 'u-bob', name: 'Bob Approver', groups: ['keyturn-approvers'],
    tid: '72f988bf-86f1-41af-91ab-2d7cd011db47', oid: '00000b0b-0000-0000-0000-000000000b0b',
  },
  'carol@example.com': {
    sub: 'u-carol', name: 'Carol Viewer', groups: ['keyturn-viewers'],
    tid: '72f988bf-86f1-41af-91ab-2d7cd011db47', oid: '0000ca40-0000-0000-0000-00000000ca40',
  },
  'dana@example.com': { sub: 'u-dana', name: 'Dana Admin', groups: ['keyturn-admins'] },
};
const BY_SUB = Object.fromEntries(Object.entries(ACCOUNTS).map(([email, a]) => [a.sub, { ...a, email }]));

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const clients = JSON.parse(process.env.OIDC_CLIENTS ?? '[]');

function signingKey(type, options, kid, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginForm(uid, error) {
  return `<!DOCTYPE html><title>Sign in</title>
${error ? `<p class="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}">
<input name="login" placeholder="email"><input name="password" type="password">
<button type="submit">Sign in</button></form>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

// The login interaction: a form, checked against ACCOUNTS and PASSWORD.
async function interaction(provider, uid, req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name !== 'login') throw new Error(`unexpected prompt ${details.prompt.name}`);
  if (req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login');
    if (Object.hasOwn(ACCOUNTS, login) && form.get('password') === PASSWORD) {
      await provider.interactionFinished(req, res, { login: { accountId: ACCOUNTS[login].sub } }, { mergeWithLastSubmission: false });
      return;
    }
    res.writeHead(401, { 'content-type': 'text/html' });
    res.end(loginForm(uid, 'wrong login or password'));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(loginForm(uid));
}

let provider;
const server = createServer((req, res) => {
  const uid = new URL(req.url, 'http://x').pathname.match(/^\/interaction\/([^/]+)$/)?.[1];
  if (!uid) return provider.callback()(req, res);
  interaction(provider, uid, req, res).catch((err) => {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end(String(err));
  });
});

server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = new Provider(issuer, {
    clients,
    jwks: {
      keys: [
        signingKey('rsa', { modulusLength: 2048 }, 'rs', 'RS256'),
        signingKey('ec', { namedCurve: 'P-256' }, 'es', 'ES256'),
      ],
    },
    cookies: { keys: ['keyturn test provider, not a secret'] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    // Claims go into the ID token (as Okta, Entra ID and Keycloak do), not only userinfo.
    conformIdTokenClaims: false,
    scopes: ['openid', 'email', 'profile', 'groups'],
    claims: { email: ['email', 'email_verified'], profile: ['name', 'tid', 'oid'], groups: ['groups'] },
    findAccount: (_ctx, sub) => Object.hasOwn(BY_SUB, sub) && {
      accountId: sub,
      claims: () => ({ email_verified: true, ...BY_SUB[sub] }),
    },
    // Consent is implied: every client here is first-party.
    loadExistingGrant: async (ctx) => {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      if (grantId) return oidc.provider.Grant.find(grantId);
      const grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
      grant.addOIDCScope(oidc.params.scope);
      await grant.save();
      return grant;
    },
  });
  console.log(`ready ${issuer}`);
});
