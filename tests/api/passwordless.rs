//! Sign-in by an emailed code (through the outbox; the real SMTP path is covered by
//! the verification tests) or a texted one (through a webhook started here), with
//! every refusal — wrong, reused, unknown address, unverified address, a number
//! another account holds, throttled — on both stores.

use serde_json::{json, Value};

use crate::helpers::{activation_code, outbox, outbox_mail, unique, Backend, Server, PASSWORD};
use crate::security::claims;

both_stores!(
    an_emailed_code_signs_in_once,
    email_code_refusals_and_throttling,
    a_texted_code_signs_in_to_the_number_s_account,
    a_sign_in_link_redirects_once_and_only_where_allowed,
    with_open_sign_up_a_first_code_creates_the_account,
    expired_codes_and_links_are_refused,
    texted_codes_are_throttled,
);

/// An account with a verified email; returns the address.
pub(crate) async fn verified_account(server: &Server, prefix: &str) -> String {
    let username = unique(prefix);
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (verification_id, code) = activation_code(server, &email).await;
    let (status, _) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204);
    email
}

async fn request_code(server: &Server, email: &str) -> String {
    let (status, body) = server.call("POST", "/v1/sign/in/otp/email", None, Some(json!({"email": email}))).await;
    assert_eq!(status, 204, "{body}");
    let (_, mail) = outbox_mail(server, email, |subject| subject == "Your sign-in code").await;
    mail.split("code is ").nth(1).and_then(|rest| rest.split('.').next()).expect("code").to_string()
}

async fn verify(server: &Server, email: &str, otp: &str) -> (u16, Value) {
    server.call("POST", "/v1/sign/in/otp/email/verify", None, Some(json!({"email": email, "otp": otp}))).await
}

fn wrong(code: &str) -> String {
    if code == "000000" { "111111".into() } else { "000000".into() }
}

async fn an_emailed_code_signs_in_once(backend: Backend) {
    let server = Server::start(backend).await;
    let email = verified_account(&server, "otp").await;
    let code = request_code(&server, &email).await;
    let (status, _) = verify(&server, &email, &wrong(&code)).await;
    assert_eq!(status, 401);
    // The address is matched without regard to case.
    let (status, session) = verify(&server, &email.to_uppercase(), &code).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(claims(session["access_token"].as_str().expect("token"))["amr"], json!(["email"]), "a mailed code is no TOTP");
    let (status, body) = verify(&server, &email, &code).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")), "a code signs in once: {body}");

    // The CLI: `authd sign-in --email-code <address>` asks for the code, then reads
    // it from stdin (another account: one account mail a minute).
    let email = verified_account(&server, "otp-cli").await;
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_authd"))
        .args(["sign-in", "--email-code", &email])
        .env("AUTHD_URL", &server.base)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (_, mail) = outbox_mail(&server, &email, |subject| subject == "Your sign-in code").await;
    let code = mail.split("code is ").nth(1).and_then(|rest| rest.split('.').next()).expect("code");
    std::io::Write::write_all(&mut cli.stdin.take().expect("stdin"), format!("{code}\n").as_bytes()).expect("write");
    let output = cli.wait_with_output().expect("wait");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let session: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(claims(session["access_token"].as_str().expect("token"))["amr"], json!(["email"]));
}

async fn email_code_refusals_and_throttling(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "2"), ("AUTHD_LOCKOUT_DURATION", "600")]).await;
    // Unknown and unverified addresses: 204 all the same, and no mail.
    let unknown = format!("{}@example.com", unique("nobody"));
    let unverified = format!("{}@example.com", unique("unverified"));
    let token = server.invitation().await;
    server.api().sign_up(&unique("unverified"), PASSWORD, Some(&token), Some(&unverified)).await.expect("sign up");
    for email in [&unknown, &unverified] {
        let (status, _) = server.call("POST", "/v1/sign/in/otp/email", None, Some(json!({"email": email}))).await;
        assert_eq!(status, 204);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(outbox(&server).iter().all(|(to, subject, _)| !(subject == "Your sign-in code" && (to == &unknown || to == &unverified))));
    let (status, _) = verify(&server, &unknown, "123456").await;
    assert_eq!(status, 401);
    // Bad input names its field.
    let (status, body) = server.call("POST", "/v1/sign/in/otp/email", None, Some(json!({"email": "not an address"}))).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["email".to_string()]), "{body}");

    // Guesses count on the account's throttle: past the threshold, even the right
    // code is refused (429) and not spent.
    let email = verified_account(&server, "otp-guess").await;
    let code = request_code(&server, &email).await;
    for _ in 0..2 {
        let (status, _) = verify(&server, &email, &wrong(&code)).await;
        assert_eq!(status, 401);
    }
    let (status, body) = verify(&server, &email, &code).await;
    assert_eq!(status, 429, "{body}");
}

/// Makes `number` the verified number of `bearer`'s account (the texted code through `hook`).
pub(crate) async fn verify_number(server: &Server, hook: &crate::verifications::Webhook, bearer: &str, number: &str) {
    let (status, body) = server.call("POST", "/v1/user/phone/change", Some(bearer), Some(json!({"phone_number": number}))).await;
    assert_eq!(status, 204, "{body}");
    let text = hook.received().last().cloned().expect("text");
    let body = text["body"].as_str().expect("body");
    let id = body.split("verification id ").nth(1).and_then(|rest| rest.split(')').next()).expect("id");
    let code = body.split(" code is ").nth(1).and_then(|rest| rest.split(' ').next()).expect("code");
    let (status, body) = server.call("POST", "/v1/user/phone/verify", Some(bearer), Some(json!({"verification_id": id, "code": code}))).await;
    assert_eq!(status, 204, "{body}");
}

/// The last text message the webhook got for `to`: its code (the first 6 digits).
pub(crate) fn texted_code(hook: &crate::verifications::Webhook, to: &str) -> String {
    let text = hook.received().into_iter().rev().find(|m| m["to"] == to).expect("a text message");
    let body = text["body"].as_str().expect("body");
    body.split("code is ").nth(1).map(|rest| rest.chars().take_while(char::is_ascii_digit).collect()).expect("code")
}

async fn a_texted_code_signs_in_to_the_number_s_account(backend: Backend) {
    let hook = crate::verifications::webhook(200).await;
    let server = Server::start_with(backend, &[("AUTHD_SMS_WEBHOOK_URL", &hook.url)]).await;
    let (alice, bob) = (unique("sms-a"), unique("sms-b"));
    let profile = server.sign_up(&alice).await;
    server.sign_up(&bob).await;
    let number = format!("+1415555{:04}", rand_digits());
    // Alice verifies the number (a fresh sign-in is recent enough to change it).
    let session = server.sign_in(&alice).await;
    verify_number(&server, &hook, &session.access_token, &number).await;
    // Bob cannot take Alice's number.
    let bobs = server.sign_in(&bob).await;
    let (status, _) = server.call("POST", "/v1/user/phone/change", Some(&bobs.access_token), Some(json!({"phone_number": number}))).await;
    assert_eq!(status, 204);
    let text = hook.received().last().cloned().expect("text");
    let body = text["body"].as_str().expect("body");
    let id = body.split("verification id ").nth(1).and_then(|rest| rest.split(')').next()).expect("id");
    let code = body.split(" code is ").nth(1).and_then(|rest| rest.split(' ').next()).expect("code");
    let (status, body) = server.call("POST", "/v1/user/phone/verify", Some(&bobs.access_token), Some(json!({"verification_id": id, "code": code}))).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("phone_number_taken")), "{body}");

    // Sign-in by text message.
    let start = |number: &str| json!({"phone_number": number});
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(start(&number))).await;
    assert_eq!(status, 204);
    let code = texted_code_arrives(&hook, &number).await;
    assert_eq!(code.len(), 6, "a sign-in code was texted");
    let verify = |otp: &str| json!({"phone_number": number, "otp": otp});
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(verify(&wrong(&code)))).await;
    assert_eq!(status, 401);
    let (status, session) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(verify(&code))).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["profile_id"], profile);
    assert_eq!(claims(session["access_token"].as_str().expect("token"))["amr"], json!(["sms"]));
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(verify(&code))).await;
    assert_eq!(status, 401, "a code signs in once");

    // An unknown number: 204 all the same, and nothing is texted; a malformed one: 422.
    let before = hook.received().len();
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(start("+442071838750"))).await;
    assert_eq!(status, 204);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(hook.received().len(), before);
    let (status, body) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(start("555-0100"))).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["phone_number".to_string()]), "{body}");
}

pub(crate) fn rand_digits() -> u16 {
    (uuid::Uuid::new_v4().as_u128() % 10_000) as u16
}

/// The link in the last sign-in mail to `email`: its ticket and `redirect_to`.
async fn link_in_mail(server: &Server, email: &str) -> (String, Option<String>) {
    let (_, mail) = outbox_mail(server, email, |subject| subject == "Your sign-in link").await;
    let link = mail.split("Sign in: ").nth(1).and_then(|rest| rest.lines().next()).expect("link");
    assert!(link.starts_with("http://localhost:8080/v1/verify?"), "AUTHD_PUBLIC_URL: {link}");
    let url = reqwest::Url::parse(link).expect("url");
    let get = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.to_string());
    (get("ticket").expect("ticket"), get("redirect_to"))
}

async fn a_sign_in_link_redirects_once_and_only_where_allowed(backend: Backend) {
    let allowed = ("AUTHD_ALLOWED_REDIRECT_URLS", "https://app.example.com/auth,http://localhost:3000/");
    let server = Server::start_with(backend, &[allowed]).await;
    let email = verified_account(&server, "link").await;
    let start = |redirect_to: &str| json!({"email": email, "redirect_to": redirect_to});
    // No open redirect: lookalikes and neighbours are refused before anything is sent.
    for bad in ["https://app.example.com.evil.test/auth", "https://app.example.com/authx", "https://evil.test/"] {
        let (status, body) = server.call("POST", "/v1/sign/in/passwordless/email", None, Some(start(bad))).await;
        assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["redirect_to".to_string()]), "{bad}: {body}");
    }
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/email", None, Some(start("https://app.example.com/auth/done"))).await;
    assert_eq!(status, 204);
    let (ticket, redirect_to) = link_in_mail(&server, &email).await;
    assert_eq!(redirect_to.as_deref(), Some("https://app.example.com/auth/done"));

    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let follow = |redirect_to: &str| {
        let url = reqwest::Url::parse_with_params(&format!("{}/v1/verify", server.base), &[("ticket", ticket.as_str()), ("redirect_to", redirect_to)]).expect("url");
        let browser = browser.clone();
        async move { browser.get(url).send().await.expect("get") }
    };
    // A redirect_to changed in the link: 422, no page.
    assert_eq!(follow("https://evil.test/").await.status(), 422);
    // The link opens a page that spends nothing (a mail scanner signs no one in and
    // burns no link)...
    for _ in 0..2 {
        let page = follow("https://app.example.com/auth/done").await;
        assert_eq!(page.status(), 200);
        assert!(page.headers()["content-type"].to_str().expect("type").starts_with("text/html"));
        let html = page.text().await.expect("html");
        assert!(html.contains(r#"<form method="post" action="verify">"#) && html.contains(&format!(r#"value="{ticket}""#)), "{html}");
        assert!(!html.contains("<script"), "no script needed");
    }
    // ...and its button posts the form: 303 to redirect_to, the token in the fragment.
    let submit = |redirect_to: &str| {
        let form = [("ticket", ticket.clone()), ("redirect_to", redirect_to.to_string())];
        let request = browser.post(format!("{}/v1/verify", server.base)).form(&form);
        async move { request.send().await.expect("post") }
    };
    assert_eq!(submit("https://evil.test/").await.status(), 422, "refused before anything is spent");
    let response = submit("https://app.example.com/auth/done").await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().expect("location").to_string();
    let (before, fragment) = location.split_once('#').expect("a fragment");
    assert_eq!(before, "https://app.example.com/auth/done", "the token never goes in the query");
    let refresh_token = fragment.strip_prefix("refresh_token=").expect("refresh token");
    let session = server.api().refresh(refresh_token).await.expect("the refresh token works");
    assert_eq!(claims(&session.access_token)["amr"], json!(["email"]));
    // Used once: submitted again, or posted as JSON, it is 401.
    assert_eq!(submit("https://app.example.com/auth/done").await.status(), 401);
    let (status, _) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 401);
    for forged in [format!("{}x", &ticket[..ticket.len() - 1]), "nothing".to_string()] {
        let (status, _) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": forged}))).await;
        assert_eq!(status, 401, "{forged}");
    }

    // For API clients: POST /v1/verify with the ticket (another account: one mail a minute).
    let email = verified_account(&server, "link-api").await;
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/email", None, Some(json!({"email": email}))).await;
    assert_eq!(status, 204);
    let (ticket, redirect_to) = link_in_mail(&server, &email).await;
    assert_eq!(redirect_to, None);
    let (status, session) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 200, "{session}");
}

async fn with_open_sign_up_a_first_code_creates_the_account(backend: Backend) {
    let hook = crate::verifications::webhook(200).await;
    let server = Server::start_with(backend, &[("AUTHD_OPEN_SIGNUP", "true"), ("AUTHD_SMS_WEBHOOK_URL", &hook.url)]).await;
    // By email: the code's first use creates the account, the address verified.
    let email = format!("{}@example.com", unique("new-by-code"));
    let code = request_code(&server, &email).await;
    let (status, _) = verify(&server, &email, &wrong(&code)).await;
    assert_eq!(status, 401, "a wrong code creates nothing");
    let (status, session) = verify(&server, &email, &code).await;
    assert_eq!(status, 200, "{session}");
    let profile = server.api().user(session["access_token"].as_str().expect("token")).await.expect("user");
    assert_eq!((profile.email.as_deref(), profile.email_verified), (Some(email.as_str()), true));
    let (status, _) = verify(&server, &email, &code).await;
    assert_eq!(status, 401, "used once");
    // By text message, likewise, the number the account's.
    let number = format!("+4420{:08}", uuid::Uuid::new_v4().as_u128() % 100_000_000);
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(json!({"phone_number": number}))).await;
    assert_eq!(status, 204);
    let code = texted_code_arrives(&hook, &number).await;
    let (status, session) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(json!({"phone_number": number, "otp": code}))).await;
    assert_eq!(status, 200, "{session}");
    let profile = server.api().user(session["access_token"].as_str().expect("token")).await.expect("user");
    assert_eq!(profile.phone_number.as_deref(), Some(number.as_str()));
}

/// The mail `smtpd` got for `to` with `subject`: its body, quoted-printable soft
/// breaks and `=3D` undone.
async fn delivered(smtpd: &crate::helpers::SmtpServer, to: &str, subject: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        for message in smtpd.messages() {
            let message = message.replace("\r\n", "\n");
            let (head, body) = message.split_once("\n\n").expect("headers and body");
            if head.lines().any(|l| l == format!("To: {to}")) && head.lines().any(|l| l == format!("Subject: {subject}")) {
                return body.replace("=\n", "").replace("=3D", "=");
            }
        }
        assert!(std::time::Instant::now() < deadline, "no mail to {to} with subject {subject:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The link through a real SMTP server (aiosmtpd, which scripts/test installs): the
/// mail goes out, the link in it signs in once.
#[tokio::test]
async fn a_sign_in_link_goes_out_over_smtp() {
    let smtpd = crate::helpers::SmtpServer::start();
    let smtp = smtpd.url.clone();
    let server = Server::start_with(Backend::Sqlite, &[("AUTHD_SMTP_URL", &smtp)]).await;

    let username = unique("smtp-link");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let activation = delivered(&smtpd, &email, "Activate your account").await;
    let (verification_id, code) = crate::helpers::code_and_id(activation.trim());
    let (status, _) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204);

    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/email", None, Some(json!({"email": email}))).await;
    assert_eq!(status, 204);
    let mail = delivered(&smtpd, &email, "Your sign-in link").await;
    drop(smtpd);
    let link = mail.split("Sign in: ").nth(1).and_then(|rest| rest.lines().next()).expect("link");
    let url = reqwest::Url::parse(link.trim()).expect("url");
    let ticket = url.query_pairs().find(|(k, _)| k == "ticket").map(|(_, v)| v.to_string()).expect("ticket");
    let (status, session) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 200, "{session}");
    let (status, _) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 401, "a link signs in once");
    assert!(!outbox(&server).iter().any(|(to, _, _)| to == &email), "nothing went to the outbox");
}

async fn expired_codes_and_links_are_refused(backend: Backend) {
    let hook = crate::verifications::webhook(200).await;
    let server = Server::start_with(backend, &[("AUTHD_SIGN_IN_CODE_TTL", "1"), ("AUTHD_OPEN_SIGNUP", "true"), ("AUTHD_SMS_WEBHOOK_URL", &hook.url)]).await;
    let number = format!("+4420{:08}", uuid::Uuid::new_v4().as_u128() % 100_000_000);
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(json!({"phone_number": number}))).await;
    assert_eq!(status, 204);
    let texted = texted_code_arrives(&hook, &number).await;
    let email = verified_account(&server, "expiry").await;
    let code = request_code(&server, &email).await;
    let other = verified_account(&server, "expiry-link").await;
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/email", None, Some(json!({"email": other}))).await;
    assert_eq!(status, 204);
    let (ticket, _) = link_in_mail(&server, &other).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let (status, _) = verify(&server, &email, &code).await;
    assert_eq!(status, 401, "an expired code");
    let (status, _) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 401, "an expired link");
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(json!({"phone_number": number, "otp": texted}))).await;
    assert_eq!(status, 401, "an expired texted code");
}

/// Waits for a sign-in code texted to `number`.
async fn texted_code_arrives(hook: &crate::verifications::Webhook, number: &str) -> String {
    for _ in 0..50 {
        if hook.received().iter().any(|m| m["to"] == number && m["body"].as_str().is_some_and(|b| b.starts_with("Your sign-in code"))) {
            return texted_code(hook, number);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no sign-in code texted to {number}");
}

async fn texted_codes_are_throttled(backend: Backend) {
    let hook = crate::verifications::webhook(200).await;
    let env = [("AUTHD_OPEN_SIGNUP", "true"), ("AUTHD_SMS_WEBHOOK_URL", hook.url.as_str()), ("AUTHD_LOCKOUT_THRESHOLD", "2"), ("AUTHD_LOCKOUT_DURATION", "600")];
    let server = Server::start_with(backend, &env).await;
    let number = format!("+4420{:08}", uuid::Uuid::new_v4().as_u128() % 100_000_000);
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(json!({"phone_number": number}))).await;
    assert_eq!(status, 204);
    let code = texted_code_arrives(&hook, &number).await;
    let verify = |otp: String| json!({"phone_number": number, "otp": otp});
    for _ in 0..2 {
        let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(verify(wrong(&code)))).await;
        assert_eq!(status, 401);
    }
    let (status, body) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(verify(code.clone()))).await;
    assert_eq!(status, 429, "past the threshold even the right code: {body}");
}
