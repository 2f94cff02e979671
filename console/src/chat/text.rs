//! A hold in words, the same in every chat: the command line as a shell reads it back, the
//! destination with its name, and text an agent chose made visible (its control and
//! bidirectional-formatting characters shown as `\u{…}`, never obeyed) and cut at a limit.

/// Marks text cut at a limit.
pub const CUT: &str = " …[cut]";

/// Characters that reorder the text around them (Trojan Source): shown, never obeyed.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with its control (but newline and tab) and bidirectional-formatting characters
/// shown as `\u{…}`, cut with [`CUT`] to at most `limit` bytes.
pub fn visible(text: &str, limit: usize) -> String {
    visible_with(text, limit, |_, _| None)
}

/// [`visible`], with the characters `special` gives a piece for (seeing the text written
/// so far) written as that piece: a chat's own escapes.
pub fn visible_with(
    text: &str,
    limit: usize,
    special: impl Fn(char, &str) -> Option<&'static str>,
) -> String {
    let mut out = String::with_capacity(text.len().min(limit));
    let room = limit.saturating_sub(CUT.len());
    for c in text.chars() {
        let piece = match (special(c, &out), c) {
            (Some(piece), _) => piece.to_owned(),
            (None, '\n' | '\t') => c.to_string(),
            (None, c) if c.is_control() || is_bidi(c) => format!("\\u{{{:04x}}}", u32::from(c)),
            (None, c) => c.to_string(),
        };
        if out.len() + piece.len() > room {
            out.push_str(CUT);
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// A command line as the approver reads it, quoted as a POSIX shell would read it back:
/// an argument with anything but plain characters is single-quoted, its quotes as `'\''`.
pub fn command_line(argv: &[String]) -> String {
    let plain = |c: char| c.is_alphanumeric() || "_@%+=:,./-".contains(c);
    argv.iter()
        .map(|arg| {
            if !arg.is_empty() && arg.chars().all(plain) {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where an egress hold goes: `tcp api.example.com (93.184.215.14):443`.
pub fn destination(egress: &proto::v1::Egress) -> String {
    if egress.domain.is_empty() {
        format!("{} {}:{}", egress.protocol, egress.address, egress.port)
    } else {
        format!("{} {} ({}):{}", egress.protocol, egress.domain, egress.address, egress.port)
    }
}

/// Why a hold closed, in words: `closed_reason` as the console keeps it (the host's
/// `CloseReason`), or the hold's status when it has none.
pub fn closed(reason: &str) -> &str {
    match reason {
        "CLOSE_REASON_APPROVED_LOCALLY" => "approved on the host",
        "CLOSE_REASON_DENIED_LOCALLY" => "denied on the host",
        "CLOSE_REASON_TIMEOUT" => "timed out on the host",
        "CLOSE_REASON_PROCESS_EXITED" => "the held process is gone",
        "CLOSE_REASON_DECIDED" => "decided",
        "CLOSE_REASON_ABANDONED" => "the host's daemon could not keep it",
        other => other,
    }
}

/// `word` with its first letter in upper case: `Expired`.
pub fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_read_back_as_the_shell_would() {
        let argv = ["curl", "-d", "a b", "x' '/", "", "ok=1"].map(str::to_owned);
        assert_eq!(command_line(&argv), "curl -d 'a b' 'x'\\'' '\\''/' '' ok=1");
    }

    #[test]
    fn controls_and_bidi_are_shown_and_long_text_cut() {
        assert_eq!(visible("a\u{202E}b\u{7}\nc", 100), "a\\u{202e}b\\u{0007}\nc");
        let cut = visible(&"\u{202E}".repeat(40), 50);
        assert!(cut.len() <= 50 && cut.ends_with(CUT), "{cut}");
        assert!(cut.trim_end_matches(CUT).split("\\u{").skip(1).all(|p| p == "202e}"), "{cut}");
    }
}
