// Drives a keybound server with stock OAuth libraries nobody here wrote: panva's openid-client
// (discovery, RFC 8693 token exchange with DPoP, RFC 6749 refresh, its own DPoP nonce retry)
// and jose (verifying the access tokens with nothing but the JWKS). Only their public APIs, and
// nothing keybound-specific but the values of RFC 8693 parameters.
//
// Input (environment): KEYBOUND_ISSUER, KEYBOUND_API_KEY, KEYBOUND_SCOPE, and
// KEYBOUND_DPOP_ALG (ES256 or EdDSA). Output: one JSON line on stdout describing what
// happened; exit status 0 only if every step succeeded. Run by tests/api/interop.rs.

import * as client from 'openid-client'
import * as jose from 'jose'

const issuer = process.env.KEYBOUND_ISSUER
const apiKey = process.env.KEYBOUND_API_KEY
const scope = process.env.KEYBOUND_SCOPE
const alg = process.env.KEYBOUND_DPOP_ALG || 'ES256'

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`)
}

// Every token endpoint answer's status, in order (openid-client's documented customFetch hook),
// so the caller can see the library's own nonce retry happen.
const statuses = []
const recordingFetch = async (url, options) => {
  const res = await fetch(url, options)
  if (new URL(url).pathname === '/v1/token') statuses.push(res.status)
  return res
}

// RFC 8414 discovery, as openid-client documents it for plain OAuth 2.0 servers. The API key
// is not a client credential (token_endpoint_auth_methods_supported: ["none"]).
const config = await client.discovery(
  new URL(issuer),
  'interop-client',
  undefined,
  client.None(),
  { algorithm: 'oauth2', execute: [client.allowInsecureRequests] },
)
config[client.customFetch] = recordingFetch
const metadata = config.serverMetadata()
check(metadata.issuer === issuer, `issuer ${metadata.issuer}`)
check(
  metadata.grant_types_supported.includes('urn:ietf:params:oauth:grant-type:token-exchange'),
  'token exchange is advertised',
)

const keyPair = await client.randomDPoPKeyPair(alg)
const DPoP = client.getDPoPHandle(config, keyPair)
const jkt = await jose.calculateJwkThumbprint(await jose.exportJWK(keyPair.publicKey))
const jwks = jose.createRemoteJWKSet(new URL(metadata.jwks_uri))

async function verified(accessToken) {
  const { payload, protectedHeader } = await jose.jwtVerify(accessToken, jwks, {
    issuer,
    audience: issuer,
    typ: 'at+jwt',
    algorithms: ['EdDSA'],
  })
  check(payload.cnf?.jkt === jkt, 'the token is bound to our DPoP key')
  return { sub: payload.sub, scope: payload.scope, kid: protectedHeader.kid, jti: payload.jti }
}

// RFC 8693 token exchange: the API key is the subject token.
const exchanged = await client.genericGrantRequest(
  config,
  'urn:ietf:params:oauth:grant-type:token-exchange',
  {
    subject_token: apiKey,
    subject_token_type: 'urn:keybound:params:oauth:token-type:api-key',
    requested_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    scope,
  },
  { DPoP },
)
check(exchanged.token_type === 'dpop', `token_type ${exchanged.token_type}`)
check(
  exchanged.issued_token_type === 'urn:ietf:params:oauth:token-type:access_token',
  'issued_token_type',
)
check(typeof exchanged.refresh_token === 'string', 'a refresh token')
const exchangeClaims = await verified(exchanged.access_token)

// RFC 6749 section 6 refresh, with the same DPoP key.
const refreshed = await client.refreshTokenGrant(config, exchanged.refresh_token, undefined, {
  DPoP,
})
check(refreshed.token_type === 'dpop', `token_type ${refreshed.token_type}`)
check(refreshed.refresh_token !== exchanged.refresh_token, 'the refresh token rotated')
const refreshClaims = await verified(refreshed.access_token)
check(refreshClaims.jti !== exchangeClaims.jti, 'a new access token')

console.log(
  JSON.stringify({
    exchange: { ...exchangeClaims, expires_in: exchanged.expires_in },
    refresh: { ...refreshClaims, expires_in: refreshed.expires_in },
    statuses,
  }),
)
