//! The user-facing commands: fill a bucket, sign up, sign in, refresh, verify, sign
//! out — all through the `client` crate, against a running server. Passwords come
//! from a terminal prompt or, when stdin is not a terminal, its first line; never
//! from an argument.

pub mod bench;
pub mod replay;

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context};
use client::{Api, SignInOutcome};

use crate::config::Command;

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Fill(args) => {
            let api = Api::new(&args.target.url);
            let filled = api.fill_bucket(&args.admin_token, &args.bucket, args.count).await?;
            for token in &filled.tokens {
                println!("{token}");
            }
            eprintln!("{} added; {} available in `{}`", filled.added, filled.available, filled.bucket);
        }
        Command::SignUp(args) => {
            let password = read_new_password()?;
            let api = Api::new(&args.target.url);
            let profile_id =
                api.sign_up(&args.username, password.as_bytes(), args.token.as_deref(), args.email.as_deref()).await?;
            println!("{}", serde_json::json!({ "profile_id": profile_id }));
        }
        Command::SignIn(args) if args.pat => {
            let token = read_secret("Personal access token: ")?;
            let session = Api::new(&args.target.url).sign_in_pat(token.trim()).await?;
            println!("{}", serde_json::to_string_pretty(&session)?);
        }
        Command::SignIn(args) if args.email_code.is_some() => {
            let (api, email) = (Api::new(&args.target.url), args.email_code.unwrap_or_default());
            api.sign_in_email_code_start(&email).await?;
            eprintln!("a code was mailed to {email} if it is an account's verified address");
            let code = read_secret("Code from the mail: ")?;
            let outcome = api.sign_in_email_code(&email, code.trim()).await?;
            print_session(&api, outcome).await?;
        }
        Command::SignIn(args) => {
            let password = read_secret("Password: ")?;
            let api = Api::new(&args.target.url);
            let outcome = if args.private {
                api.sign_in_private(&args.username, password.as_bytes()).await?
            } else {
                api.sign_in(&args.username, password.as_bytes()).await?
            };
            print_session(&api, outcome).await?;
        }
        Command::Refresh(args) => {
            let session = Api::new(&args.target.url).refresh(&args.refresh_token).await?;
            println!("{}", serde_json::to_string_pretty(&session)?);
        }
        Command::Verify(args) => {
            let verified = Api::new(&args.target.url).jwt_verify(&args.access_token).await?;
            println!(
                "{}",
                serde_json::json!({
                    "profile_id": verified.profile_id,
                    "session_id": verified.session_id,
                    "expires_at": verified.expires_at,
                })
            );
        }
        Command::SignOut(args) => {
            let api = Api::new(&args.token.target.url);
            let revoked = api.sign_out(&args.token.access_token, args.all).await?;
            println!("{}", serde_json::json!({ "revoked": revoked }));
        }
        Command::Sessions(args) => {
            let api = Api::new(&args.token.target.url);
            match args.end {
                Some(session_id) => {
                    api.end_session(&args.token.access_token, &session_id).await?;
                    println!("{}", serde_json::json!({ "ended": session_id }));
                }
                None => println!("{}", serde_json::to_string_pretty(&api.sessions(&args.token.access_token).await?)?),
            }
        }
        Command::ChangePassword(args) => {
            let password = read_new_password()?;
            Api::new(&args.target.url).change_password(&args.access_token, password.as_bytes()).await?;
            eprintln!("password changed; every other session of the account has ended");
        }
        Command::Serve | Command::Openapi | Command::GenerateSetup | Command::Bench(_) | Command::Replay(_) => bail!("not a client command"),
    }
    Ok(())
}

/// A new password: twice from the terminal, or once from stdin.
/// Prints the session a first factor opened, asking for the authenticator code first
/// when the account has TOTP on.
async fn print_session(api: &Api, outcome: SignInOutcome) -> anyhow::Result<()> {
    let session = match outcome {
        SignInOutcome::Session(session) => session,
        SignInOutcome::MfaRequired { mfa_ticket } => {
            let code = read_secret("Authenticator code: ")?;
            api.sign_in_mfa(&mfa_ticket, code.trim()).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&session)?);
    Ok(())
}

fn read_new_password() -> anyhow::Result<String> {
    let password = read_secret("Password: ")?;
    let confirm = if std::io::stdin().is_terminal() { read_secret("Again: ")? } else { password.clone() };
    if password != confirm {
        bail!("the passwords differ");
    }
    Ok(password)
}

/// A line from the terminal (not echoed) or from stdin.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).context("cannot read from the terminal")?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if secret.is_empty() {
        bail!("nothing entered");
    }
    Ok(secret)
}
