//! krr: record and replay x86-64 Linux kernel executions.

mod demo;

mod run;

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
    /// Boot a Linux kernel (bzImage) on krr's PC, console on stdout.
    Run {
        /// The kernel image (bzImage).
        #[arg(long)]
        kernel: String,
        /// An initramfs (cpio).
        #[arg(long)]
        initrd: Option<String>,
        /// The kernel command line.
        #[arg(long, default_value = run::DEFAULT_APPEND)]
        append: String,
        /// Guest RAM, e.g. 512M or 2G.
        #[arg(long, default_value = "512M")]
        mem: String,
        /// One instruction per block (precise mode).
        #[arg(long)]
        singlestep: bool,
        /// Interpreter only (no JIT).
        #[arg(long)]
        interpret: bool,
        /// Stop after this many instructions.
        #[arg(long)]
        max_instructions: Option<u64>,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo::run().map(|()| 0),
        Command::Run {
            kernel,
            initrd,
            append,
            mem,
            singlestep,
            interpret,
            max_instructions,
        } => run::parse_size(&mem).and_then(|mem_bytes| {
            run::run(run::RunArgs {
                kernel,
                initrd,
                append,
                mem_bytes,
                singlestep,
                interpret,
                max_instructions,
            })
        }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("krr: {e}");
            std::process::exit(1);
        }
    }
}
