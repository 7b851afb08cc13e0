//! The fast path for phone numbers in international form (`+` and digits): the answer of
//! `phonenumber::parse(None, "+…")` followed by `phonenumber::is_valid`, from the same
//! metadata and the same patterns, without `phonenumber`'s regex cache.
//!
//! That cache is one process-wide mutex over a 100-entry LRU map keyed by each pattern's text:
//! every match hashes a pattern of up to hundreds of bytes with SipHash under the lock, and a
//! workload spanning more than 100 patterns (numbers of several countries) recompiles them.
//! Here each country calling code's patterns are compiled once, on its first number, and held
//! for the life of the process.
//!
//! The path answers only what it can answer exactly. Where `phonenumber` would strip a national
//! prefix, or the number is invalid, it returns `None` and the caller asks `phonenumber`, which
//! also words the error. `tests::the_fast_path_agrees_with_phonenumber` holds the two together.

use std::sync::OnceLock;

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use regex::{Regex, RegexBuilder};

/// Country calling codes have one to three digits (`phonenumber::consts`).
const MAX_COUNTRY_CODE_DIGITS: usize = 3;
/// Bounds of a national significant number (`phonenumber::consts`).
const MIN_NATIONAL_DIGITS: usize = 2;
const MAX_NATIONAL_DIGITS: usize = 17;
/// `phonenumber::NationalNumber` keeps the value in 56 bits.
const MAX_NATIONAL_VALUE: u64 = 1 << 56;

/// Per country calling code, its compiled metadata; `None` inside where the code is unknown
/// or its metadata takes a path this module does not reproduce.
static CODES: [OnceLock<Option<Code>>; 1000] = [const { OnceLock::new() }; 1000];

/// `tel:+CCNNN…` for `digits` (the number after `+`, ASCII digits only) if it is a valid
/// number; `None` if it is not or if only `phonenumber` can say.
pub(super) fn canonical(digits: &str) -> Option<String> {
    if digits.len() <= MIN_NATIONAL_DIGITS || digits.starts_with('0') {
        return None;
    }
    // Country codes are prefix-free: the first length with metadata is the code.
    let (code, country) = (1..=MAX_COUNTRY_CODE_DIGITS).find_map(|len| {
        let code: u16 = digits[..len].parse().ok()?;
        Some((code, compiled(code)?))
    })?;
    let national = &digits[code_digits(code)..];

    // `phonenumber::parse` picks a region from the number without leading zeros and strips
    // a national prefix if that region has one that matches; this path leaves those numbers
    // to it.
    if let Some(region) = country.region_for(national.trim_start_matches('0')) {
        if region.strip_national_prefix(national)? != national {
            return None;
        }
    }
    if !(MIN_NATIONAL_DIGITS..=MAX_NATIONAL_DIGITS).contains(&national.len()) {
        return None;
    }
    // `NationalNumber` keeps the leading zeros as a count and the rest as a number, so it
    // prints back the same digits, if they fit.
    let significant = national.trim_start_matches('0');
    if significant.parse::<u64>().ok()? >= MAX_NATIONAL_VALUE {
        return None;
    }
    let region = country.region_for(national)?;
    if !region.is_valid(national) {
        return None;
    }
    Some(format!("tel:+{code}{national}"))
}

fn code_digits(code: u16) -> usize {
    match code {
        0..=9 => 1,
        10..=99 => 2,
        _ => 3,
    }
}

fn compiled(code: u16) -> Option<&'static Code> {
    CODES
        .get(usize::from(code))?
        .get_or_init(|| Code::compile(code))
        .as_ref()
}

/// The regions sharing a country calling code, in the metadata's order (main region first).
struct Code {
    regions: Vec<Region>,
}

impl Code {
    fn compile(code: u16) -> Option<Code> {
        let ids = DATABASE.region(&code)?;
        let regions = match ids.as_slice() {
            // A non-geographic code (such as +800): its own metadata.
            ["001"] => vec![Region::compile(DATABASE.by_code(&code)?.first()?)?],
            _ => {
                let mut regions = Vec::with_capacity(ids.len());
                for id in ids {
                    // phonenumber goes through `country::Id`; a region it cannot name is one
                    // it cannot pick.
                    id.parse::<phonenumber::country::Id>().ok()?;
                    regions.push(Region::compile(DATABASE.by_id(id)?)?);
                }
                regions
            }
        };
        Some(Code { regions })
    }

    /// `phonenumber::validator::source_for`: the only region, or the first whose leading
    /// digits start the number or, for a region without them, whose patterns take it.
    fn region_for(&self, national: &str) -> Option<&Region> {
        if let [only] = self.regions.as_slice() {
            return Some(only);
        }
        self.regions
            .iter()
            .find(|region| match &region.leading_digits {
                Some(leading) => starts_with_match(leading, national),
                None => region.is_valid(national),
            })
    }
}

/// One region's metadata, as `phonenumber`'s parser and validator read it.
struct Region {
    general: Pattern,
    /// The descriptors `phonenumber::validator::number_type` tries after the general one; a
    /// number any of them takes has a type, so it is valid.
    types: Vec<Pattern>,
    leading_digits: Option<Regex>,
    national_prefix: Option<String>,
    national_prefix_for_parsing: Option<Regex>,
    national_prefix_transform_rule: Option<String>,
}

impl Region {
    fn compile(meta: &Metadata) -> Option<Region> {
        let descriptors = meta.descriptors();
        let types = [
            descriptors.premium_rate(),
            descriptors.toll_free(),
            descriptors.shared_cost(),
            descriptors.voip(),
            descriptors.personal_number(),
            descriptors.pager(),
            descriptors.uan(),
            descriptors.voicemail(),
            descriptors.fixed_line(),
            descriptors.mobile(),
        ];
        Some(Region {
            general: Pattern::compile(descriptors.general())?,
            types: types
                .into_iter()
                .flatten()
                .map(Pattern::compile)
                .collect::<Option<_>>()?,
            leading_digits: meta
                .leading_digits()
                .map(|p| regex(p.as_str()))
                .transpose()
                .ok()?,
            national_prefix: meta.national_prefix().map(str::to_owned),
            national_prefix_for_parsing: meta
                .national_prefix_for_parsing()
                .map(|p| regex(p.as_str()))
                .transpose()
                .ok()?,
            national_prefix_transform_rule: meta
                .national_prefix_transform_rule()
                .map(str::to_owned),
        })
    }

    /// `phonenumber::validator::number_type(..) != Type::Unknown`.
    fn is_valid(&self, national: &str) -> bool {
        self.general.matches(national) && self.types.iter().any(|t| t.matches(national))
    }

    /// The national number `phonenumber::parse` goes on with in this region: what
    /// `parser::helper::national_number` leaves, then without a leading national prefix.
    /// `None` where phonenumber itself would fail (a transform rule without its group).
    fn strip_national_prefix<'a>(&self, national: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        let strip_prefix = |number: Cow<'a, str>| match &self.national_prefix {
            Some(prefix) if number.starts_with(prefix.as_str()) => match number {
                Cow::Borrowed(n) => Cow::Borrowed(&n[prefix.len()..]),
                Cow::Owned(n) => Cow::Owned(n[prefix.len()..].to_owned()),
            },
            _ => number,
        };
        let Some(parsing) = &self.national_prefix_for_parsing else {
            // Without a parsing pattern the prefix is stripped there and again in `parse`.
            return Some(strip_prefix(strip_prefix(Cow::Borrowed(national))));
        };
        let stripped = match parsing.find(national) {
            Some(found) if found.start() == 0 => {
                let viable = self.general.matches(national);
                let captures = parsing.captures(national)?;
                let first = captures.get(1);
                let last = captures.get(captures.len() - 1);
                match (&self.national_prefix_transform_rule, last) {
                    (Some(rule), Some(_)) => {
                        let transformed = parsing.replace(national, rule.as_str());
                        if viable && !self.general.matches(&transformed) {
                            Cow::Borrowed(national)
                        } else {
                            first?;
                            Cow::Owned(transformed.into_owned())
                        }
                    }
                    // The match starts at 0, so the rest after it is always taken.
                    _ => Cow::Borrowed(&national[found.end()..]),
                }
            }
            _ => Cow::Borrowed(national),
        };
        Some(strip_prefix(stripped))
    }
}

/// A number descriptor: its pattern and the lengths it allows.
struct Pattern {
    national_number: Regex,
    possible_length: Vec<u16>,
}

impl Pattern {
    fn compile(descriptor: &Descriptor) -> Option<Pattern> {
        Some(Pattern {
            national_number: regex(descriptor.national_number().as_str()).ok()?,
            possible_length: descriptor.possible_length().to_vec(),
        })
    }

    /// `phonenumber::metadata::Descriptor::is_match`.
    fn matches(&self, national: &str) -> bool {
        let length_allowed = self.possible_length.is_empty()
            || u16::try_from(national.len()).is_ok_and(|len| self.possible_length.contains(&len));
        length_allowed && starts_with_match(&self.national_number, national)
    }
}

/// Whether the leftmost match of `pattern` starts at the beginning, as phonenumber asks it.
fn starts_with_match(pattern: &Regex, text: &str) -> bool {
    pattern.find(text).is_some_and(|m| m.start() == 0)
}

/// Compiled as `phonenumber` compiles its metadata patterns.
fn regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).ignore_whitespace(true).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// phonenumber's answer for `+digits`.
    fn reference(digits: &str) -> Option<String> {
        let number = phonenumber::parse(None, format!("+{digits}")).ok()?;
        phonenumber::is_valid(&number)
            .then(|| format!("tel:+{}{}", number.code().value(), number.national()))
    }

    /// A small deterministic generator, so a failure names an input that reproduces.
    struct Digits(u64);

    impl Digits {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    /// Every region's example numbers, each with every digit changed, one digit more and one
    /// less, and a national prefix in front; and random digits after every country code.
    fn inputs() -> Vec<String> {
        let mut inputs = Vec::new();
        for meta in DATABASE.iter() {
            let code = meta.country_code();
            let d = meta.descriptors();
            let descriptors = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ];
            for example in descriptors
                .into_iter()
                .flatten()
                .filter_map(|d| d.example())
            {
                inputs.push(format!("{code}{example}"));
                inputs.push(format!("{code}{example}0"));
                inputs.push(format!("{code}{}", &example[..example.len() - 1]));
                inputs.push(format!("{code}0{example}"));
                if let Some(prefix) = meta.national_prefix() {
                    inputs.push(format!("{code}{prefix}{example}"));
                }
                for (i, c) in example.char_indices() {
                    let other = char::from(b'0' + (c as u8 - b'0' + 1) % 10);
                    inputs.push(format!(
                        "{code}{}{other}{}",
                        &example[..i],
                        &example[i + 1..]
                    ));
                }
            }
        }
        let mut random = Digits(0x5eed_1234_abcd_ef01);
        for code in 1..1000u16 {
            if DATABASE.region(&code).is_none() {
                continue;
            }
            for _ in 0..40 {
                let len = 1 + random.next(17) as usize;
                let national: String = (0..len)
                    .map(|_| char::from(b'0' + random.next(10) as u8))
                    .collect();
                inputs.push(format!("{code}{national}"));
            }
        }
        for len in 0..=20 {
            inputs.push("1".repeat(len));
            inputs.push("4".repeat(len));
        }
        inputs
    }

    #[test]
    fn the_fast_path_agrees_with_phonenumber() {
        let (mut already_canonical, mut answered) = (0, 0);
        for digits in inputs() {
            let expected = reference(&digits);
            if let Some(fast) = canonical(&digits) {
                assert_eq!(Some(&fast), expected.as_ref(), "for +{digits}");
                answered += 1;
            }
            already_canonical += usize::from(expected == Some(format!("tel:+{digits}")));
        }
        // Every valid number already in canonical form is answered here; only those written
        // with a national prefix after the country code are left to phonenumber.
        assert!(
            already_canonical > 5_000,
            "only {already_canonical} such inputs"
        );
        assert_eq!(answered, already_canonical);
    }

    #[test]
    fn numbers_it_cannot_answer_are_left_to_phonenumber() {
        // Too short, a leading zero, an unassigned country code, too long.
        for digits in [
            "",
            "4",
            "44",
            "0442071000000",
            "999123456",
            "4420710000001234567",
        ] {
            assert_eq!(canonical(digits), None, "for +{digits}");
        }
        assert_eq!(
            canonical("442071000000").as_deref(),
            Some("tel:+442071000000")
        );
    }
}
