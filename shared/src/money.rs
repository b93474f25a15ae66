//! Money as integer micros of the campaign currency.
//!
//! There is exactly one way for a float to become money: [`Money::from_cpm`], the conversion of an
//! OpenRTB CPM price at the edge. Everything else is integer arithmetic that fails instead of
//! wrapping.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Micros per currency unit (1 USD = 1,000,000 micros).
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// An amount of money in micros of the campaign currency. May be negative only where a signed
/// delta is meant (for example a budget decrease); ledgers check signs where they matter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

/// Why an operation on money was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The result does not fit in an `i64` of micros.
    #[error("amount overflows i64 micros")]
    Overflow,
    /// An OpenRTB price was NaN, infinite or negative.
    #[error("price is not a finite non-negative number: {0}")]
    BadPrice(String),
    /// A decimal amount could not be read.
    #[error("not a decimal amount with at most 6 fractional digits: {0:?}")]
    BadDecimal(String),
}

impl Money {
    /// Zero micros.
    pub const ZERO: Money = Money(0);
    /// The largest representable amount.
    pub const MAX: Money = Money(i64::MAX);

    /// Money from a count of micros.
    pub const fn from_micros(micros: i64) -> Money {
        Money(micros)
    }

    /// The count of micros.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// One impression at this CPM (a price per thousand): the unit every bid, lease and
    /// rebalancing decision counts in. Truncated to the micro, as the edge bids it; a CPM under
    /// 1,000 micros makes a zero unit, which the edge refuses to bid on.
    pub const fn per_impression(self) -> Money {
        Money(self.0 / 1000)
    }

    /// True for amounts below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// `self + other`, or [`MoneyError::Overflow`].
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.0
            .checked_add(other.0)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// `self - other`, or [`MoneyError::Overflow`].
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.0
            .checked_sub(other.0)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// `self × factor`, or [`MoneyError::Overflow`].
    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        self.0
            .checked_mul(factor)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// The sum of many amounts, or [`MoneyError::Overflow`].
    pub fn checked_sum<I: IntoIterator<Item = Money>>(items: I) -> Result<Money, MoneyError> {
        items
            .into_iter()
            .try_fold(Money::ZERO, |acc, m| acc.checked_add(m))
    }

    /// Converts an OpenRTB CPM price (currency units per thousand impressions) to the micros
    /// charged for one impression.
    ///
    /// **Rounding rule.** The price is taken as the shortest decimal that reads back as the same
    /// `f64` (what the exchange wrote in its JSON, for every price written with at most 15
    /// significant digits), multiplied by 1000 exactly in decimal, and rounded to a whole micro
    /// half away from zero (`x.xxx5` → up). So `1.0045` CPM is `1005` micros, although the `f64`
    /// nearest to 1.0045 is slightly below it. NaN, infinities and negative prices are refused.
    pub fn from_cpm(cpm: f64) -> Result<Money, MoneyError> {
        if !cpm.is_finite() || (cpm.is_sign_negative() && cpm != 0.0) {
            return Err(MoneyError::BadPrice(cpm.to_string()));
        }
        // `Display` for f64 prints the shortest round-trip decimal, never in exponent form;
        // into a buffer on the stack (this is on the edge's bid path, for every floor), on the
        // heap only for a price too long for it (tiny fractions: hundreds of zeros).
        let mut buf = StackText::<64>::new();
        match std::fmt::Write::write_fmt(&mut buf, format_args!("{}", cpm.abs())) {
            Ok(()) => Money::from_cpm_str(buf.as_str()),
            Err(_) => Money::from_cpm_str(&cpm.abs().to_string()),
        }
    }

    /// [`Money::from_cpm`] on a price written in decimal (`"2.5"`, `"0.0125"`), with the same
    /// rounding rule. Used where the exact decimal text is available.
    pub fn from_cpm_str(cpm: &str) -> Result<Money, MoneyError> {
        let bad = || MoneyError::BadPrice(cpm.to_string());
        let (int_part, frac_part) = split_decimal(cpm).ok_or_else(bad)?;
        // micros per impression = cpm × 1,000,000 / 1000 = cpm × 1000: the integer part times
        // 1000, plus the first three fractional digits; the fourth decides the rounding.
        let mut micros: i64 = 0;
        for d in int_part.bytes() {
            micros = micros
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(d - b'0')))
                .ok_or(MoneyError::Overflow)?;
        }
        micros = micros.checked_mul(1000).ok_or(MoneyError::Overflow)?;
        let frac = frac_part.as_bytes();
        for (i, scale) in [100, 10, 1].into_iter().enumerate() {
            let digit = frac.get(i).map_or(0, |d| i64::from(d - b'0'));
            micros = micros
                .checked_add(digit * scale)
                .ok_or(MoneyError::Overflow)?;
        }
        if frac.get(3).is_some_and(|d| *d >= b'5') {
            micros = micros.checked_add(1).ok_or(MoneyError::Overflow)?;
        }
        Ok(Money(micros))
    }
}

/// Splits `"12.345"` into `("12", "345")`; both parts ASCII digits, at least one digit in all.
fn split_decimal(s: &str) -> Option<(&str, &str)> {
    let (int_part, frac_part) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int_part) || !digits(frac_part) || int_part.len() + frac_part.len() == 0 {
        return None;
    }
    Some((int_part, frac_part))
}

/// Shown as decimal currency with six fractional digits: `12.500000`, `-0.000001`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let unit = MICROS_PER_UNIT.unsigned_abs();
        write!(f, "{sign}{}.{:06}", abs / unit, abs % unit)
    }
}

/// Reads a decimal amount of currency (`"100"`, `"12.5"`, `"-0.000001"`) exactly; more than six
/// fractional digits is an error rather than a rounding.
impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Money, MoneyError> {
        let bad = || MoneyError::BadDecimal(s.to_string());
        let (negative, rest) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int_part, frac_part) = split_decimal(rest).ok_or_else(bad)?;
        if frac_part.len() > 6 {
            return Err(bad());
        }
        let mut micros: i64 = 0;
        for d in int_part.bytes().chain(frac_part.bytes()) {
            micros = micros
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(d - b'0')))
                .ok_or(MoneyError::Overflow)?;
        }
        for _ in frac_part.len()..6 {
            micros = micros.checked_mul(10).ok_or(MoneyError::Overflow)?;
        }
        Ok(Money(if negative { -micros } else { micros }))
    }
}

/// Text written into `N` bytes on the stack; a write that does not fit fails.
struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let into = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        into.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_cpm(cpm: f64, micros: i64) {
        assert_eq!(Money::from_cpm(cpm), Ok(Money(micros)), "cpm {cpm}");
    }

    #[test]
    fn one_impression_is_a_thousandth_of_the_cpm_truncated() {
        // A CPM held as money (a campaign's `bid_cpm`): 1.50 a thousand is 1,500 micros each.
        let cpm = Money::from_micros;
        assert_eq!(cpm(1_500_000).per_impression(), Money::from_micros(1_500));
        // 0.0125 a thousand is 12.5 micros an impression: the edge bids 12.
        assert_eq!(cpm(12_500).per_impression(), Money::from_micros(12));
        assert_eq!(cpm(999).per_impression(), Money::ZERO);
        // from_cpm reads an exchange's CPM number straight into the price of one impression.
        assert_eq!(
            Money::from_cpm_str("1.5").unwrap(),
            cpm(1_500_000).per_impression()
        );
    }

    #[test]
    fn cpm_conversion_follows_the_rounding_rule() {
        check_cpm(0.0, 0);
        check_cpm(1.0, 1000);
        check_cpm(2.5, 2500);
        check_cpm(0.001, 1);
        check_cpm(0.0004, 0);
        check_cpm(0.0005, 1); // half away from zero
        check_cpm(1.0045, 1005); // the f64 is 1.00449999…; the written decimal is 1.0045
        check_cpm(1.0044999, 1004);
        check_cpm(0.1 + 0.2, 300); // 0.30000000000000004
        check_cpm(12345.6789, 12_345_679);
        check_cpm(1e-7, 0);
        check_cpm(-0.0, 0);
    }

    #[test]
    fn bad_prices_are_refused() {
        for p in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.001] {
            assert!(
                matches!(Money::from_cpm(p), Err(MoneyError::BadPrice(_))),
                "{p}"
            );
        }
        assert_eq!(Money::from_cpm(1e300), Err(MoneyError::Overflow));
        // Too long for the stack buffer: the same answer as the text the exchange wrote.
        for p in [1e-300, 3.1e-60, 123_456_789.123_456_7] {
            assert_eq!(
                Money::from_cpm(p),
                Money::from_cpm_str(&p.to_string()),
                "{p}"
            );
        }
        for s in ["", ".", "1e3", "+1", "1.2.3", " 1", "0x10"] {
            assert!(Money::from_cpm_str(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        let max = Money::MAX;
        assert_eq!(max.checked_add(Money(1)), Err(MoneyError::Overflow));
        assert_eq!(
            Money(i64::MIN).checked_sub(Money(1)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money(i64::MAX / 2 + 1).checked_mul(2),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Money(5).checked_sub(Money(7)), Ok(Money(-2)));
        assert_eq!(
            Money::checked_sum([Money(1), Money(2), Money(3)]),
            Ok(Money(6))
        );
        assert_eq!(
            Money::checked_sum([max, Money(1)]),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        for (micros, text) in [
            (0, "0.000000"),
            (1, "0.000001"),
            (-1, "-0.000001"),
            (12_500_000, "12.500000"),
            (i64::MAX, "9223372036854.775807"),
            (i64::MIN, "-9223372036854.775808"),
        ] {
            assert_eq!(Money(micros).to_string(), text);
            if micros != i64::MIN {
                assert_eq!(text.parse::<Money>(), Ok(Money(micros)), "{text}");
            }
        }
        assert_eq!("100".parse::<Money>(), Ok(Money(100_000_000)));
        assert_eq!("0.5".parse::<Money>(), Ok(Money(500_000)));
        assert!("0.0000001".parse::<Money>().is_err());
        assert_eq!("9223372036855".parse::<Money>(), Err(MoneyError::Overflow));
    }
}
