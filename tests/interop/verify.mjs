// Verifies a broker token the way a relying party does: discovery, then the JWKS it names,
// then signature, iss, aud, exp. Usage: node verify.mjs ISSUER AUDIENCE TOKEN
// Prints the verified claims as JSON; exits 1 with the reason when verification fails.
import { createRemoteJWKSet, jwtVerify } from "jose";

const [issuer, audience, token] = process.argv.slice(2);
try {
  const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  if (discovery.issuer !== issuer) throw new Error(`discovery names issuer ${discovery.issuer}`);
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ["RS256"],
    requiredClaims: ["iss", "sub", "aud", "exp", "iat", "jti"],
  });
  console.log(JSON.stringify({ header: protectedHeader, claims: payload }));
} catch (err) {
  console.error(`${err.code ?? err.name}: ${err.message}`);
  process.exit(1);
}
