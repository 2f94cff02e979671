//! The `keyturn` command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keyturn", version, about = "A person in the loop for what AI agents do on this host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this kernel offers and which enforcement mode keyturn would use.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Doctor { json } => {
            let report = keyturn::doctor::report();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                keyturn::doctor::print(&report);
            }
            if report.mode.is_none() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
