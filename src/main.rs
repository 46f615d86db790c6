//! authd: the server and its command-line client.

mod account;
mod api;
mod app;
mod audit;
mod bench;
mod chain;
mod cli;
mod config;
mod delivery;
mod event_log;
mod keys;
mod log;
mod opaque;
mod private_sign_in;
mod relay;
mod replay;
mod server;
mod shred;
mod store;
mod totp;

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
            println!("{}", keys::generate_setup());
            Ok(())
        }
        Some(Command::Bench(args)) => bench::run(args).await,
        Some(Command::Replay(args)) => match replay::run(args, &cli.server).await {
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
