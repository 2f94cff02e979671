//! `keyturn`: see [`keyturn::cli`].

fn main() {
    keyturn::cli::main();
}
