//! krr: record and replay x86-64 Linux kernel executions.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "krr",
    version,
    about = "Record and replay x86-64 Linux kernel executions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the built-in guest in every engine tier and compare the results.
    Demo,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo::run(),
    };
    if let Err(e) = result {
        eprintln!("krr: {e}");
        std::process::exit(1);
    }
}
