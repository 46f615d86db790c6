//! authd: the server and its command-line client.

mod api;
mod app;
mod cli;
mod config;
mod crypto;
mod delivery;
mod relay;
mod server;
mod store;

use std::process::ExitCode;

use clap::Parser;

use config::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.server.log_format);
    let result = match cli.command {
        None | Some(Command::Serve) => server::serve(cli.server).await,
        Some(Command::Openapi) => {
            print!("{}", api::spec_yaml());
            Ok(())
        }
        Some(Command::GenerateSetup) => {
            println!("{}", crypto::keys::generate_setup());
            Ok(())
        }
        Some(Command::Bench(args)) => cli::bench::run(args).await,
        Some(Command::Replay(args)) => match cli::replay::run(args, &cli.server).await {
            Ok(code) => return code,
            Err(error) => Err(error),
        },
        Some(command) => cli::run(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("authd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
        // Whatever RUST_LOG asks: libraries that could log a message's content (an
        // SMTP conversation, a request's headers) never do. authd's own lines carry no
        // address, code, token or secret at any level (tests/api/verifications.rs).
        .add_directive("lettre=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
