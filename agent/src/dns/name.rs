//! DNS names as keyturn's policy and resolver compare them (lowercase ASCII, no trailing dot),
//! and the `domain = "…"` patterns a policy writes: an exact name, or `*.` before a suffix.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// The longest name in text form without the trailing dot, in bytes (255 on the wire).
pub const MAX_NAME_LEN: usize = 253;

/// Why a name or a domain pattern was refused, worded for the author of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NameError {
    /// No label at all (`""` or `"."`).
    #[error("the name is empty")]
    Empty,
    /// A label of length zero, as in `a..b` or `.a`; `index` counts from 1.
    #[error("label {index} is empty")]
    EmptyLabel {
        /// Which label, counting from 1.
        index: usize,
    },
    /// A label over [`MAX_LABEL_LEN`] bytes.
    #[error("label `{label}` is longer than 63 bytes")]
    LabelTooLong {
        /// The label as written.
        label: String,
    },
    /// A name over [`MAX_NAME_LEN`] bytes.
    #[error("the name is longer than 253 bytes")]
    TooLong,
    /// A `*` that is not the whole first label of a pattern.
    #[error("a wildcard may only be the first label, as `*.example.com`")]
    MisplacedWildcard,
    /// A pattern that is only a wildcard (`*` or `*.`).
    #[error("a wildcard needs a domain after it, as `*.example.com`")]
    BareWildcard,
    /// A label with bytes outside ASCII (Unicode names must be written in punycode).
    #[error("`{label}` is not ASCII: write it in punycode (`xn--…`)")]
    NotAscii {
        /// The label, with bytes that are not printable ASCII escaped.
        label: String,
    },
    /// An ASCII character other than a letter, a digit, `-` or `_`.
    #[error("`{}` is not allowed in a name (letters, digits, `-` and `_` only)", .character.escape_debug())]
    BadCharacter {
        /// The refused character.
        character: char,
    },
}

/// A DNS name: lowercase ASCII labels of letters, digits, `-` and `_`, each 1 to 63 bytes, at
/// least one label, at most 253 bytes in text form, kept without the trailing dot. Kept in
/// state files in text form, checked again as it is read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Name(String);

impl Name {
    /// Parses a name in text form: any ASCII case (it is lowercased), one optional trailing dot.
    ///
    /// # Errors
    ///
    /// A [`NameError`] saying which rule the text breaks.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        if !text.is_ascii() {
            let label = text.split('.').find(|label| !label.is_ascii()).unwrap_or(text);
            return Err(NameError::NotAscii { label: label.to_owned() });
        }
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        Self::from_labels(text.split('.').map(str::as_bytes))
    }

    /// Builds a name from its labels as they come off the wire, under the same rules as
    /// [`Name::parse`]: letters are lowercased, any other byte outside the allowed set is refused.
    ///
    /// # Errors
    ///
    /// A [`NameError`] saying which rule the labels break.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, NameError> {
        let mut text = String::new();
        for (index, label) in (1..).zip(labels) {
            check_label(index, label)?;
            if !text.is_empty() {
                text.push('.');
            }
            text.extend(label.iter().map(|byte| char::from(byte.to_ascii_lowercase())));
            // Every label adds at least one byte, so this also bounds an endless iterator.
            if text.len() > MAX_NAME_LEN {
                return Err(NameError::TooLong);
            }
        }
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        Ok(Self(text))
    }

    /// The text form, without the trailing dot.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The labels, from the leftmost to the top-level one.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

/// Checks one label (`index` counts from 1) against the rules of [`Name`].
fn check_label(index: usize, label: &[u8]) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel { index });
    }
    if !label.is_ascii() {
        return Err(NameError::NotAscii { label: label.escape_ascii().to_string() });
    }
    if let Some(&byte) =
        label.iter().find(|byte| !(byte.is_ascii_alphanumeric() || **byte == b'-' || **byte == b'_'))
    {
        return Err(NameError::BadCharacter { character: char::from(byte) });
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong { label: label.escape_ascii().to_string() });
    }
    Ok(())
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;

    fn try_from(text: String) -> Result<Self, NameError> {
        Self::parse(&text)
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, NameError> {
        Self::parse(text)
    }
}

/// The domain a policy rule applies to, as in `domain = "api.openai.com"` or
/// `domain = "*.github.com"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// Exactly this name.
    Exact(Name),
    /// Any name with one or more labels before this suffix (`*.github.com` matches
    /// `a.github.com` and `x.y.github.com`, not `github.com`).
    Suffix(Name),
}

impl DomainPattern {
    /// Parses a pattern: a name, or `*.` followed by a name. The wildcard may only be the whole
    /// first label.
    ///
    /// # Errors
    ///
    /// A [`NameError`] saying which rule the text breaks.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        match text.strip_prefix("*.") {
            Some(suffix) if suffix.contains('*') => Err(NameError::MisplacedWildcard),
            Some(suffix) => match Name::parse(suffix) {
                Err(NameError::Empty) => Err(NameError::BareWildcard),
                parsed => parsed.map(Self::Suffix),
            },
            None if text == "*" => Err(NameError::BareWildcard),
            None if text.contains('*') => Err(NameError::MisplacedWildcard),
            None => Name::parse(text).map(Self::Exact),
        }
    }

    /// Whether `name` is covered by this pattern, comparing whole labels.
    #[must_use]
    pub fn matches(&self, name: &Name) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Suffix(suffix) => is_below(name, suffix),
        }
    }

    /// Whether some name matches both patterns.
    #[must_use]
    pub fn overlaps(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(name), Self::Suffix(suffix)) | (Self::Suffix(suffix), Self::Exact(name)) => {
                is_below(name, suffix)
            }
            (Self::Suffix(a), Self::Suffix(b)) => a == b || is_below(a, b) || is_below(b, a),
        }
    }
}

/// Whether `name` has one or more labels before `suffix`.
fn is_below(name: &Name, suffix: &Name) -> bool {
    name.as_str().strip_suffix(suffix.as_str()).is_some_and(|prefix| prefix.ends_with('.'))
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => write!(f, "{name}"),
            Self::Suffix(name) => write!(f, "*.{name}"),
        }
    }
}

impl FromStr for DomainPattern {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, NameError> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_overlap_when_some_name_matches_both() {
        let pattern = |text: &str| DomainPattern::parse(text).unwrap();
        assert!(pattern("*.example.com").overlaps(&pattern("a.example.com")));
        assert!(pattern("*.example.com").overlaps(&pattern("*.b.example.com")));
        assert!(pattern("*.b.example.com").overlaps(&pattern("*.example.com")));
        assert!(!pattern("*.example.com").overlaps(&pattern("example.com")));
        assert!(!pattern("*.example.com").overlaps(&pattern("*.badexample.com")));
        assert!(!pattern("a.example.com").overlaps(&pattern("b.example.com")));
    }

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap()
    }

    fn pattern(text: &str) -> DomainPattern {
        DomainPattern::parse(text).unwrap()
    }

    /// Labels of the given lengths, made of `a`s, joined by dots.
    fn of_lengths(lengths: &[usize]) -> String {
        lengths.iter().map(|&len| "a".repeat(len)).collect::<Vec<_>>().join(".")
    }

    #[test]
    fn accepts_ordinary_names() {
        for (input, text) in [
            ("example.com", "example.com"),
            ("Example.COM.", "example.com"),
            ("a", "a"),
            ("com.", "com"),
            ("_dmarc.example.com", "_dmarc.example.com"),
            ("xn--bcher-kva.de", "xn--bcher-kva.de"),
            ("my-host-01.internal", "my-host-01.internal"),
            ("-odd-.example", "-odd-.example"),
            ("123.45", "123.45"),
        ] {
            let parsed = name(input);
            assert_eq!(parsed.as_str(), text, "{input}");
            assert_eq!(parsed.to_string(), text, "{input}");
            assert_eq!(input.parse::<Name>(), Ok(parsed));
        }
    }

    #[test]
    fn labels_are_split_on_dots() {
        assert_eq!(name("www.Example.com").labels().collect::<Vec<_>>(), ["www", "example", "com"]);
        assert_eq!(name("a").labels().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn refuses_empty_names_and_labels() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse("."), Err(NameError::Empty));
        assert_eq!(Name::parse(".."), Err(NameError::EmptyLabel { index: 1 }));
        assert_eq!(Name::parse(".a"), Err(NameError::EmptyLabel { index: 1 }));
        assert_eq!(Name::parse("a..b"), Err(NameError::EmptyLabel { index: 2 }));
        assert_eq!(Name::parse("a.b.."), Err(NameError::EmptyLabel { index: 3 }));
        assert_eq!(NameError::Empty.to_string(), "the name is empty");
        assert_eq!(NameError::EmptyLabel { index: 2 }.to_string(), "label 2 is empty");
    }

    #[test]
    fn label_length_limit_is_63() {
        let ok = of_lengths(&[63, 3]);
        assert_eq!(name(&ok).as_str(), ok);
        let long = "b".repeat(64);
        let err = Name::parse(&format!("x.{long}.com")).unwrap_err();
        assert_eq!(err, NameError::LabelTooLong { label: long.clone() });
        assert_eq!(err.to_string(), format!("label `{long}` is longer than 63 bytes"));
    }

    #[test]
    fn name_length_limit_is_253() {
        let longest = of_lengths(&[63, 63, 63, 61]);
        assert_eq!(longest.len(), 253);
        assert_eq!(name(&longest).as_str(), longest);
        assert_eq!(name(&format!("{longest}.")).as_str(), longest);
        let too_long = of_lengths(&[63, 63, 63, 62]);
        assert_eq!(too_long.len(), 254);
        assert_eq!(Name::parse(&too_long), Err(NameError::TooLong));
        assert_eq!(Name::parse(&of_lengths(&[1; 200])), Err(NameError::TooLong));
        assert_eq!(NameError::TooLong.to_string(), "the name is longer than 253 bytes");
    }

    #[test]
    fn refuses_non_ascii_with_the_punycode_advice() {
        for (input, label) in [("bücher.de", "bücher"), ("例え.jp", "例え"), ("a..ü", "ü"), ("x y.é", "é")]
        {
            let err = Name::parse(input).unwrap_err();
            assert_eq!(err, NameError::NotAscii { label: label.to_owned() }, "{input}");
        }
        assert_eq!(
            Name::parse("bücher.de").unwrap_err().to_string(),
            "`bücher` is not ASCII: write it in punycode (`xn--…`)"
        );
        assert!(matches!(DomainPattern::parse("*.bücher.de"), Err(NameError::NotAscii { .. })));
    }

    #[test]
    fn refuses_characters_outside_the_set() {
        for (input, character) in [
            ("a b.com", ' '),
            ("a/b", '/'),
            ("*.example.com", '*'),
            ("a@b.c", '@'),
            ("tab\t.com", '\t'),
            ("a:80", ':'),
        ] {
            assert_eq!(Name::parse(input), Err(NameError::BadCharacter { character }), "{input}");
        }
        assert_eq!(
            NameError::BadCharacter { character: '/' }.to_string(),
            "`/` is not allowed in a name (letters, digits, `-` and `_` only)"
        );
        assert_eq!(
            NameError::BadCharacter { character: '\0' }.to_string(),
            "`\\0` is not allowed in a name (letters, digits, `-` and `_` only)"
        );
    }

    #[test]
    fn builds_from_wire_labels() {
        let labels: [&[u8]; 3] = [b"WWW", b"Example", b"com"];
        assert_eq!(Name::from_labels(labels), Ok(name("www.example.com")));
        assert_eq!(Name::from_labels(std::iter::empty()), Err(NameError::Empty));
        assert_eq!(Name::from_labels([&b""[..]]), Err(NameError::EmptyLabel { index: 1 }));
        assert_eq!(
            Name::from_labels([&b"a.b"[..]]),
            Err(NameError::BadCharacter { character: '.' }),
            "a dot inside a wire label must not turn into a label boundary"
        );
        assert_eq!(Name::from_labels([&b"a\0"[..]]), Err(NameError::BadCharacter { character: '\0' }));
        assert_eq!(
            Name::from_labels([&b"b\xc3\xbccher"[..], b"de"]),
            Err(NameError::NotAscii { label: "b\\xc3\\xbccher".to_owned() })
        );
        assert_eq!(Name::from_labels([&[0xff][..]]), Err(NameError::NotAscii { label: "\\xff".to_owned() }));
        let long = [b'a'; 64];
        assert!(matches!(Name::from_labels([&long[..]]), Err(NameError::LabelTooLong { .. })));
        let endless = std::iter::repeat(&b"a"[..]);
        assert_eq!(Name::from_labels(endless), Err(NameError::TooLong));
    }

    #[test]
    fn parses_patterns() {
        assert_eq!(pattern("api.openai.com"), DomainPattern::Exact(name("api.openai.com")));
        assert_eq!(pattern("*.github.com"), DomainPattern::Suffix(name("github.com")));
        assert_eq!(pattern("*.GitHub.com."), DomainPattern::Suffix(name("github.com")));
        assert_eq!(pattern("*.com"), DomainPattern::Suffix(name("com")));
        assert_eq!("*.Hub.com".parse::<DomainPattern>(), Ok(pattern("*.hub.com")));
        assert_eq!(pattern("*.GitHub.com.").to_string(), "*.github.com");
        assert_eq!(pattern("API.openai.com").to_string(), "api.openai.com");
    }

    #[test]
    fn refuses_misplaced_and_bare_wildcards() {
        for input in ["a.*.com", "*a.com", "a*.com", "**.com", "*.*.com", "com.*", "x.*", "*.a*"] {
            assert_eq!(DomainPattern::parse(input), Err(NameError::MisplacedWildcard), "{input}");
        }
        for input in ["*", "*.", "*.."] {
            assert!(
                matches!(DomainPattern::parse(input), Err(NameError::BareWildcard | NameError::Empty)),
                "{input}"
            );
        }
        assert_eq!(DomainPattern::parse("*"), Err(NameError::BareWildcard));
        assert_eq!(DomainPattern::parse("*."), Err(NameError::BareWildcard));
        assert_eq!(DomainPattern::parse("*.a..b"), Err(NameError::EmptyLabel { index: 2 }));
        assert_eq!(DomainPattern::parse(""), Err(NameError::Empty));
        assert_eq!(
            NameError::MisplacedWildcard.to_string(),
            "a wildcard may only be the first label, as `*.example.com`"
        );
    }

    #[test]
    fn suffix_patterns_match_one_or_more_labels_before_the_suffix() {
        let github = pattern("*.github.com");
        assert!(github.matches(&name("a.github.com")));
        assert!(github.matches(&name("x.y.github.com")));
        assert!(!github.matches(&name("github.com")));
        assert!(!github.matches(&name("evilgithub.com")));
        assert!(!github.matches(&name("github.com.evil")));
        assert!(!github.matches(&name("com")));

        let hub = pattern("*.hub.com");
        assert!(!hub.matches(&name("evilhub.com")));
        assert!(!hub.matches(&name("hub.com")));
        assert!(hub.matches(&name("a.hub.com")));

        let tld = pattern("*.com");
        assert!(tld.matches(&name("example.com")));
        assert!(!tld.matches(&name("com")));
        assert!(!tld.matches(&name("example.comx")));
    }

    #[test]
    fn exact_patterns_match_only_the_name() {
        let api = pattern("api.openai.com");
        assert!(api.matches(&name("API.openai.com.")));
        assert!(!api.matches(&name("x.api.openai.com")));
        assert!(!api.matches(&name("openai.com")));
        assert!(!api.matches(&name("api.openai.co")));
    }
}
