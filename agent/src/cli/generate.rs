//! `keyturn generate DIR` (hidden): the man pages and shell completions, written from the
//! command line's own definition, so that the package's documentation cannot drift from it.

use std::path::Path;

use anyhow::Context as _;
use clap_complete::Shell;

pub fn generate(command: &clap::Command, dir: &Path) -> anyhow::Result<i32> {
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(command.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "keyturn", &completions)
            .with_context(|| format!("writing {shell} completions to {}", completions.display()))?;
    }
    Ok(0)
}
