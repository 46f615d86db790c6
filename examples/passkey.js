// The whole browser side of authd's passkeys: no base64 code, the JSON forms of
// WebAuthn Level 3 (parse…OptionsFromJSON, credential.toJSON()).
const out = document.getElementById("out");
let session = null;

async function call(path, body, bearer) {
  const headers = { "content-type": "application/json" };
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = response.status === 204 ? {} : await response.json();
  if (!response.ok) throw new Error(`${response.status} ${answer.error}: ${answer.message}`);
  return answer;
}

function show(what) {
  out.textContent = typeof what === "string" ? what : JSON.stringify(what, null, 2);
}

async function signUp() {
  const username = document.getElementById("username").value;
  const signup_token = document.getElementById("token").value || undefined;
  const start = await call("/v1/sign/up/webauthn", { username, signup_token, nickname: navigator.platform || "this device" });
  const credential = await navigator.credentials.create({ publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(start.options.publicKey) });
  session = await call("/v1/sign/up/webauthn/verify", { challenge_id: start.challenge_id, credential: credential.toJSON() });
  show({ signed_up: session.profile_id, session });
}

async function signIn(username) {
  const start = await call("/v1/sign/in/webauthn", username ? { username } : {});
  const credential = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(start.options.publicKey) });
  session = await call("/v1/sign/in/webauthn/verify", { challenge_id: start.challenge_id, credential: credential.toJSON() });
  show({ signed_in: session.profile_id, session });
}

async function list() {
  if (!session) return show("sign in first");
  show(await call("/v1/user/webauthn", undefined, session.access_token));
}

const guard = (action) => () => action().catch((error) => show(String(error)));
document.getElementById("sign-up").onclick = guard(signUp);
document.getElementById("sign-in").onclick = guard(() => signIn(document.getElementById("username").value));
document.getElementById("sign-in-discoverable").onclick = guard(() => signIn(null));
document.getElementById("list").onclick = guard(list);
