//! Canonical user URIs.
//!
//! Providers exchange user identities as `tel:` or `mailto:` URIs. Because the same user
//! can be written many ways (`tel:+1 (650) 253-0000`, `TEL:+16502530000`,
//! `mailto:bob@EXAMPLE.com`), every URI is reduced to one canonical text form before it
//! is compared, stored or sent:
//!
//! - `tel:+` followed by the E.164 digits, e.g. `tel:+16502530000`;
//! - `mailto:` followed by the local part exactly as given and the domain in lowercase
//!   ASCII (IDNA), e.g. `mailto:Bob@xn--bcher-kva.example`.
//!
//! Canonicalization is idempotent: canonicalizing a canonical URI returns it unchanged.

mod e164;

use std::fmt;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use phonenumber::country::Id;
use phonenumber::metadata::DATABASE;
use phonenumber::PhoneNumber;

/// Longest local part of an email address, in octets (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_PART_LEN: usize = 64;
/// Longest domain label, in octets (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// Longest domain name without the root dot, in octets (RFC 1035 §2.3.4).
const MAX_DOMAIN_LEN: usize = 253;

/// A user URI in canonical text form; only [`Canonicalizer::canonicalize`] creates one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanonicalUri(String);

impl CanonicalUri {
    /// The canonical text, e.g. `tel:+16502530000`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Which kind of URI this is.
    pub fn scheme(&self) -> UriScheme {
        // The canonical form always starts with the lowercase scheme.
        if self.0.starts_with("tel:") {
            UriScheme::Tel
        } else {
            UriScheme::Mailto
        }
    }

    /// The canonical text, by value.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for CanonicalUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The URI schemes user identities may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriScheme {
    /// A phone number (RFC 3966).
    Tel,
    /// An email address (RFC 6068).
    Mailto,
}

/// Why a URI could not be canonicalized.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum UriError {
    #[error("empty URI; expected a tel: or mailto: URI")]
    Empty,
    #[error("`{0}` has no URI scheme; expected a tel: or mailto: URI")]
    MissingScheme(String),
    #[error("unsupported URI scheme `{0}`; expected tel: or mailto:")]
    UnsupportedScheme(String),
    #[error(
        "phone number `{0}` has no country code; write it in international form \
         (starting with `+`) or configure a default country code"
    )]
    MissingCountryCode(String),
    #[error("the configured default country code +{0} is not a known country calling code")]
    UnknownDefaultCountryCode(u16),
    #[error("invalid phone number `{input}`: {reason}")]
    InvalidPhoneNumber { input: String, reason: String },
    #[error("invalid email address `{input}`: {reason}")]
    InvalidEmail { input: String, reason: String },
}

/// Turns user-supplied `tel:` and `mailto:` URIs into [`CanonicalUri`]s.
#[derive(Debug, Clone, Default)]
pub struct Canonicalizer {
    /// Country calling code (e.g. 1 or 44) assumed for phone numbers written without `+`;
    /// `None` rejects such numbers.
    default_country_code: Option<u16>,
}

impl Canonicalizer {
    pub fn new(default_country_code: Option<u16>) -> Self {
        Self {
            default_country_code,
        }
    }

    /// Canonicalizes a `tel:` or `mailto:` URI (scheme case-insensitive, surrounding
    /// whitespace ignored).
    pub fn canonicalize(&self, input: &str) -> Result<CanonicalUri, UriError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(UriError::Empty);
        }
        let (scheme, rest) = match input.split_once(':') {
            Some((scheme, rest)) if !scheme.is_empty() => (scheme, rest),
            _ => return Err(UriError::MissingScheme(input.to_owned())),
        };
        if scheme.eq_ignore_ascii_case("tel") {
            self.canonicalize_tel(rest)
        } else if scheme.eq_ignore_ascii_case("mailto") {
            canonicalize_mailto(rest)
        } else {
            Err(UriError::UnsupportedScheme(scheme.to_owned()))
        }
    }

    fn canonicalize_tel(&self, input: &str) -> Result<CanonicalUri, UriError> {
        let invalid = |reason: String| UriError::InvalidPhoneNumber {
            input: input.to_owned(),
            reason,
        };
        if input.contains(';') {
            return Err(invalid(
                "tel: URI parameters (such as `;phone-context` or `;ext`) are not supported"
                    .to_owned(),
            ));
        }
        let (international, rest) = match input.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let mut digits = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                // RFC 3966 visual separators, plus spaces as people write them.
                ' ' | '-' | '.' | '(' | ')' => {}
                '+' => return Err(invalid("`+` is only allowed at the start".to_owned())),
                other => return Err(invalid(format!("unexpected character `{other}`"))),
            }
        }
        if digits.is_empty() {
            return Err(invalid("no digits".to_owned()));
        }

        if international {
            if let Some(canonical) = e164::canonical(&digits) {
                return Ok(CanonicalUri(canonical));
            }
        }
        let number = if international {
            parse_phone(None, &format!("+{digits}"))
        } else {
            let code = self
                .default_country_code
                .ok_or_else(|| UriError::MissingCountryCode(input.to_owned()))?;
            match main_region(code) {
                Some(region) => parse_phone(Some(region), &digits),
                // Non-geographic codes (e.g. +800) have no national dialling rules, so
                // the digits are simply the number after the country code.
                None if DATABASE.by_code(&code).is_some() => {
                    parse_phone(None, &format!("+{code}{digits}"))
                }
                None => return Err(UriError::UnknownDefaultCountryCode(code)),
            }
        }
        .map_err(invalid)?;

        Ok(CanonicalUri(format!(
            "tel:+{}{}",
            number.code().value(),
            number.national()
        )))
    }
}

/// The main region of a country calling code, per the phonenumber metadata (which lists
/// the main country first, e.g. US for 1, GB for 44), if the code is geographic.
fn main_region(code: u16) -> Option<Id> {
    DATABASE.region(&code)?.first()?.parse().ok()
}

/// Parses and validates a phone number made only of digits (and a leading `+`).
fn parse_phone(region: Option<Id>, digits: &str) -> Result<PhoneNumber, String> {
    let number = phonenumber::parse(region, digits).map_err(|e| e.to_string())?;
    if phonenumber::is_valid(&number) {
        return Ok(number);
    }
    Err(format!(
        "not a valid number for country calling code +{}",
        number.code().value()
    ))
}

fn canonicalize_mailto(input: &str) -> Result<CanonicalUri, UriError> {
    let invalid = |reason: String| UriError::InvalidEmail {
        input: input.to_owned(),
        reason,
    };
    // Both would need URI decoding to mean anything; rejecting them keeps the canonical
    // form a plain address.
    if input.contains('?') {
        return Err(invalid(
            "mailto: query parts (such as `?subject=`) are not supported".to_owned(),
        ));
    }
    if input.contains('%') {
        return Err(invalid("percent-encoding is not supported".to_owned()));
    }
    let (local, domain) = match input.split_once('@') {
        Some((local, domain)) if !domain.contains('@') => (local, domain),
        _ => return Err(invalid("must contain exactly one `@`".to_owned())),
    };
    check_local_part(local).map_err(invalid)?;
    let domain = canonical_domain(domain).map_err(invalid)?;
    Ok(CanonicalUri(format!("mailto:{local}@{domain}")))
}

/// Checks an RFC 5322 dot-atom local part; quoted local parts are not supported.
fn check_local_part(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("the local part (before `@`) is empty".to_owned());
    }
    if local.len() > MAX_LOCAL_PART_LEN {
        return Err(format!(
            "the local part is longer than {MAX_LOCAL_PART_LEN} octets"
        ));
    }
    if let Some(c) = local.chars().find(|&c| !is_atext(c) && c != '.') {
        return Err(if c.is_whitespace() || c.is_control() {
            "the local part contains whitespace or control characters".to_owned()
        } else {
            format!("the local part contains `{c}`, which is not allowed")
        });
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(
            "the local part must not start or end with a dot or contain consecutive dots"
                .to_owned(),
        );
    }
    Ok(())
}

/// RFC 5322 `atext`.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// Converts a domain to lowercase ASCII (UTS 46) and checks it is a DNS host name.
fn canonical_domain(domain: &str) -> Result<String, String> {
    if domain.is_empty() {
        return Err("the domain (after `@`) is empty".to_owned());
    }
    if domain.ends_with('.') {
        return Err("the domain must not end with a dot".to_owned());
    }
    // STD3 rules restrict labels to letters, digits and hyphens, which is what mail
    // domains use; lengths are checked below to give specific messages.
    let ascii = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .map_err(|_| format!("`{domain}` is not a valid domain name"))?;
    if !ascii.contains('.') {
        return Err("the domain must have at least two labels (e.g. example.com)".to_owned());
    }
    if ascii.len() > MAX_DOMAIN_LEN {
        return Err(format!("the domain is longer than {MAX_DOMAIN_LEN} octets"));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err("the domain contains an empty label".to_owned());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "the domain label `{label}` is longer than {MAX_LABEL_LEN} octets"
            ));
        }
    }
    Ok(ascii.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(default_cc: Option<u16>, input: &str) -> Result<String, UriError> {
        Canonicalizer::new(default_cc)
            .canonicalize(input)
            .map(CanonicalUri::into_string)
    }

    fn ok(input: &str) -> String {
        canon(None, input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn phone_reason(default_cc: Option<u16>, input: &str) -> String {
        match canon(default_cc, input) {
            Err(UriError::InvalidPhoneNumber { reason, .. }) => reason,
            other => panic!("{input}: expected InvalidPhoneNumber, got {other:?}"),
        }
    }

    fn email_reason(input: &str) -> String {
        match canon(None, input) {
            Err(UriError::InvalidEmail { reason, .. }) => reason,
            other => panic!("{input}: expected InvalidEmail, got {other:?}"),
        }
    }

    const VALID: &[(&str, &str)] = &[
        ("tel:+1 (415) 555-0123", "tel:+14155550123"),
        ("tel:+1 650 253 0000", "tel:+16502530000"),
        ("tel:+1-650-253-0000", "tel:+16502530000"),
        ("tel:+1.650.253.0000", "tel:+16502530000"),
        ("TEL:+16502530000", "tel:+16502530000"),
        ("  tel:+16502530000\n", "tel:+16502530000"),
        ("tel:+44 20 7946 0958", "tel:+442079460958"),
        ("tel:+33 1 42 68 53 00", "tel:+33142685300"),
        ("tel:+49 30 123456", "tel:+4930123456"),
        // Italian fixed-line numbers keep their leading zero after the country code.
        ("tel:+39 06 6982 1234", "tel:+390669821234"),
        ("tel:+800 1234 5678", "tel:+80012345678"),
        ("mailto:bob@example.com", "mailto:bob@example.com"),
        ("Mailto:Bob@EXAMPLE.com", "mailto:Bob@example.com"),
        (
            "MAILTO:Bob.Smith+tag@Mail.Example.ORG",
            "mailto:Bob.Smith+tag@mail.example.org",
        ),
        (
            "mailto:user@Bücher.example",
            "mailto:user@xn--bcher-kva.example",
        ),
        (
            "mailto:user@BÜCHER.example",
            "mailto:user@xn--bcher-kva.example",
        ),
        (
            "mailto:user@xn--bcher-kva.example",
            "mailto:user@xn--bcher-kva.example",
        ),
        (
            "mailto:!#$&'*+-/=^_`{|}~@example.com",
            "mailto:!#$&'*+-/=^_`{|}~@example.com",
        ),
        (
            "mailto:a@my-host.example.com",
            "mailto:a@my-host.example.com",
        ),
    ];

    #[test]
    fn canonicalizes_valid_uris() {
        for (input, expected) in VALID {
            assert_eq!(ok(input), *expected, "input {input}");
        }
    }

    #[test]
    fn canonicalization_is_idempotent() {
        for default_cc in [None, Some(1), Some(44)] {
            let canonicalizer = Canonicalizer::new(default_cc);
            for (input, _) in VALID {
                let once = canonicalizer.canonicalize(input).unwrap();
                let twice = canonicalizer.canonicalize(once.as_str()).unwrap();
                assert_eq!(once, twice, "input {input}");
            }
        }
    }

    #[test]
    fn canonical_uri_accessors() {
        let tel = Canonicalizer::default()
            .canonicalize("tel:+1 650 253 0000")
            .unwrap();
        assert_eq!(tel.scheme(), UriScheme::Tel);
        assert_eq!(tel.as_str(), "tel:+16502530000");
        assert_eq!(tel.to_string(), "tel:+16502530000");

        let mail = Canonicalizer::default()
            .canonicalize("mailto:Bob@EXAMPLE.com")
            .unwrap();
        assert_eq!(mail.scheme(), UriScheme::Mailto);
        assert_eq!(mail.to_string(), "mailto:Bob@example.com");
        assert_eq!(mail.into_string(), "mailto:Bob@example.com");
    }

    #[test]
    fn national_numbers_use_the_default_country_code() {
        assert_eq!(
            canon(Some(1), "tel:415-555-0123").unwrap(),
            "tel:+14155550123"
        );
        assert_eq!(
            canon(Some(1), "tel:(650) 253-0000").unwrap(),
            "tel:+16502530000"
        );
        // The national trunk prefix (0 in the UK) is dropped.
        assert_eq!(
            canon(Some(44), "tel:020 7946 0958").unwrap(),
            "tel:+442079460958"
        );
        assert_eq!(
            canon(Some(33), "tel:01 42 68 53 00").unwrap(),
            "tel:+33142685300"
        );
        // A number with `+` ignores the default.
        assert_eq!(
            canon(Some(1), "tel:+44 20 7946 0958").unwrap(),
            "tel:+442079460958"
        );
        // Non-geographic code: the digits follow the country code directly.
        assert_eq!(
            canon(Some(800), "tel:1234 5678").unwrap(),
            "tel:+80012345678"
        );
        // Digits are read as a phone in that country would dial them: a leading 1 is
        // the NANP country code and 011 the international prefix.
        assert_eq!(
            canon(Some(1), "tel:1 650 253 0000").unwrap(),
            "tel:+16502530000"
        );
        assert_eq!(
            canon(Some(1), "tel:011 44 20 7946 0958").unwrap(),
            "tel:+442079460958"
        );
        // The result is canonical on its own, without the default.
        for (default_cc, input) in [(1, "tel:415-555-0123"), (44, "tel:020 7946 0958")] {
            let once = canon(Some(default_cc), input).unwrap();
            assert_eq!(canon(None, &once).unwrap(), once);
        }
    }

    #[test]
    fn national_number_must_be_valid_for_the_default_country() {
        // A UK number read as a US national number.
        assert!(phone_reason(Some(1), "tel:020 7946 0958").contains("+1"));
    }

    #[test]
    fn national_number_without_default_is_rejected() {
        assert_eq!(
            canon(None, "tel:12345"),
            Err(UriError::MissingCountryCode("12345".to_owned()))
        );
        assert_eq!(
            canon(None, "tel:415-555-0123"),
            Err(UriError::MissingCountryCode("415-555-0123".to_owned()))
        );
    }

    #[test]
    fn unknown_default_country_code_is_reported() {
        assert_eq!(
            canon(Some(999), "tel:4155550123"),
            Err(UriError::UnknownDefaultCountryCode(999))
        );
    }

    #[test]
    fn rejects_invalid_phone_numbers() {
        // The parser reports unassigned country codes itself.
        assert_eq!(phone_reason(None, "tel:+999123"), "invalid country code");
        assert_eq!(
            phone_reason(None, "tel:+999 1234 5678"),
            "invalid country code"
        );
        assert!(phone_reason(None, "tel:+1 555").contains("country calling code +1"));
        assert!(phone_reason(None, "tel:+44 20 7946 09581").contains("+44"));
        assert!(phone_reason(None, "tel:+1abc").contains("`a`"));
        assert!(phone_reason(None, "tel:+1 650 253 0000 0000 0000").contains("long"));
        // 555-01XX is reserved fiction space but well-formed; 0 can't start an area code.
        assert!(phone_reason(None, "tel:+1 015 555 0123").contains("+1"));
        assert_eq!(phone_reason(None, "tel:"), "no digits");
        assert_eq!(phone_reason(None, "tel:+"), "no digits");
        assert_eq!(phone_reason(None, "tel:+ - ()"), "no digits");
        assert!(phone_reason(None, "tel:+1650+2530000").contains("only allowed at the start"));
        assert!(phone_reason(None, "tel:++16502530000").contains("only allowed at the start"));
        // Non-ASCII digits, tabs and other punctuation are not separators.
        assert!(phone_reason(None, "tel:+１６５０２５３００００").contains("unexpected character"));
        assert!(phone_reason(None, "tel:+1\t650 253 0000").contains("unexpected character"));
        assert!(phone_reason(None, "tel:+1/650/253/0000").contains("`/`"));
        assert!(phone_reason(None, "tel://+16502530000").contains("`/`"));
    }

    #[test]
    fn rejects_tel_parameters() {
        for input in [
            "tel:4155550123;phone-context=+1",
            "tel:+16502530000;ext=123",
            "tel:+16502530000;isub=1",
        ] {
            let reason = phone_reason(Some(1), input);
            assert!(reason.contains("parameters"), "{input}: {reason}");
        }
    }

    #[test]
    fn rejects_empty_and_unsupported_schemes() {
        assert_eq!(canon(None, ""), Err(UriError::Empty));
        assert_eq!(canon(None, "  \t\n"), Err(UriError::Empty));
        assert_eq!(
            canon(None, "sip:bob@example.com"),
            Err(UriError::UnsupportedScheme("sip".to_owned()))
        );
        assert_eq!(
            canon(None, "https://example.com"),
            Err(UriError::UnsupportedScheme("https".to_owned()))
        );
        assert_eq!(
            canon(None, "bob@example.com"),
            Err(UriError::MissingScheme("bob@example.com".to_owned()))
        );
        assert_eq!(
            canon(None, ":+16502530000"),
            Err(UriError::MissingScheme(":+16502530000".to_owned()))
        );
        assert_eq!(
            canon(None, "+16502530000"),
            Err(UriError::MissingScheme("+16502530000".to_owned()))
        );
    }

    #[test]
    fn rejects_invalid_email_addresses() {
        let cases: &[(&str, &str)] = &[
            ("mailto:", "exactly one `@`"),
            ("mailto:bob", "exactly one `@`"),
            ("mailto:bob@a@example.com", "exactly one `@`"),
            ("mailto:@example.com", "local part (before `@`) is empty"),
            ("mailto:bob@", "domain (after `@`) is empty"),
            ("mailto:bob smith@example.com", "whitespace"),
            ("mailto:bob\u{7}@example.com", "control"),
            ("mailto:\"bob\"@example.com", "`\"`"),
            ("mailto:bob<x>@example.com", "`<`"),
            ("mailto:bo(b)@example.com", "`(`"),
            ("mailto:b,ob@example.com", "`,`"),
            ("mailto:b;ob@example.com", "`;`"),
            ("mailto:b:ob@example.com", "`:`"),
            ("mailto:b\\ob@example.com", "`\\`"),
            ("mailto:b[ob]@example.com", "`[`"),
            ("mailto:bøb@example.com", "`ø`"),
            ("mailto:.bob@example.com", "dot"),
            ("mailto:bob.@example.com", "dot"),
            ("mailto:bo..b@example.com", "dot"),
            ("mailto:bob@example.com?subject=hi", "query"),
            ("mailto:bob%40x@example.com", "percent-encoding"),
            ("mailto:bob@example.com.", "must not end with a dot"),
            ("mailto:bob@localhost", "at least two labels"),
            ("mailto:bob@example..com", "empty label"),
            ("mailto:bob@.example.com", "empty label"),
            ("mailto:bob@exa_mple.com", "not a valid domain"),
            ("mailto:bob@exa mple.com", "not a valid domain"),
            ("mailto:bob@-example.com", "not a valid domain"),
            ("mailto:bob@example-.com", "not a valid domain"),
            ("mailto:bob@[192.0.2.1]", "not a valid domain"),
            ("mailto:bob@example.com#frag", "not a valid domain"),
            ("mailto:bob@xn--zz.example", "not a valid domain"),
        ];
        for (input, expected) in cases {
            let reason = email_reason(input);
            assert!(
                reason.contains(expected),
                "{input}: reason `{reason}` lacks `{expected}`"
            );
        }
    }

    #[test]
    fn enforces_email_length_limits() {
        let local64 = "a".repeat(64);
        assert_eq!(
            ok(&format!("mailto:{local64}@example.com")),
            format!("mailto:{local64}@example.com")
        );
        assert!(email_reason(&format!("mailto:{local64}a@example.com")).contains("64 octets"));

        let label63 = "b".repeat(63);
        assert!(ok(&format!("mailto:a@{label63}.com")).ends_with(".com"));
        assert!(email_reason(&format!("mailto:a@{label63}b.com")).contains("63 octets"));

        // 4 × 63 + 3 dots = 255 octets; drop two characters to reach exactly 253.
        let long = [label63.as_str(); 4].join(".");
        assert!(email_reason(&format!("mailto:a@{long}")).contains("253 octets"));
        assert!(ok(&format!("mailto:a@{}", &long[2..])).len() > 253);
        // The limit applies to the ASCII form: a short Unicode label can grow past 63.
        let unicode_label = "ü".repeat(60);
        assert!(email_reason(&format!("mailto:a@{unicode_label}.example")).contains("63 octets"));
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            UriError::UnsupportedScheme("sip".to_owned()).to_string(),
            "unsupported URI scheme `sip`; expected tel: or mailto:"
        );
        assert_eq!(
            canon(None, "tel:+1abc").unwrap_err().to_string(),
            "invalid phone number `+1abc`: unexpected character `a`"
        );
        assert_eq!(
            canon(None, "mailto:bob").unwrap_err().to_string(),
            "invalid email address `bob`: must contain exactly one `@`"
        );
        assert!(canon(None, "tel:12345")
            .unwrap_err()
            .to_string()
            .contains("no country code"));
    }
}
