//! HTTP-date fields (RFC 9110 §5.6.7): `Date`, `Expires`, `Last-Modified`, in any of the three
//! formats a recipient must accept. The grammar is kept (single spaces, two-digit day and
//! time fields, `GMT`), but names are read in any case and the day name is not checked
//! against the date, as RFC 9110 asks recipients to be robust.

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::HeaderMap;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The time in the first line of field `name`, if it is a valid HTTP-date.
pub fn http_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    parse(headers.get(name)?.to_str().ok()?.trim())
}

/// An HTTP-date: IMF-fixdate, RFC 850 or asctime; `None` for anything else, or a time before
/// 1970.
pub fn parse(text: &str) -> Option<SystemTime> {
    let fields: Vec<&str> = text.split(' ').collect();
    let (date, time) = match fields.as_slice() {
        // Sun Nov  6 08:49:37 1994 (a one-digit day after two spaces)
        [day, month, "", d, time, year] if d.len() == 1 => {
            named(day, &DAYS)?;
            (
                (digits(d, 1)?, month_number(month)?, digits(year, 4)?),
                time,
            )
        }
        // Sun, 06 Nov 1994 08:49:37 GMT
        [day, dd, month, year, time, zone] => {
            named(day.strip_suffix(',')?, &DAYS)?;
            gmt(zone)?;
            (
                (digits(dd, 2)?, month_number(month)?, digits(year, 4)?),
                time,
            )
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [day, date, time, zone] => {
            named(day.strip_suffix(',')?, &LONG_DAYS)?;
            gmt(zone)?;
            let mut parts = date.split('-');
            let dd = digits(parts.next()?, 2)?;
            let month = month_number(parts.next()?)?;
            let yy = digits(parts.next()?, 2)?;
            if parts.next().is_some() {
                return None;
            }
            // RFC 9110 §5.6.7: a year over 50 years ahead is in the past.
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            ((dd, month, year), time)
        }
        [day, month, dd, time, year] => {
            named(day, &DAYS)?;
            (
                (digits(dd, 2)?, month_number(month)?, digits(year, 4)?),
                time,
            )
        }
        _ => return None,
    };
    let (day, month, year) = date;
    let mut clock = time.split(':');
    let hour = digits(clock.next()?, 2)?;
    let minute = digits(clock.next()?, 2)?;
    let second = digits(clock.next()?, 2)?;
    if clock.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if year < 1970 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// `time` as an IMF-fixdate (times before 1970 as 1970's first second).
pub fn format(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = seconds / 86_400;
    let (year, month, day) = civil_from_days(days);
    let clock = seconds % 86_400;
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[((days + 3) % 7) as usize];
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        MONTHS[(month - 1) as usize],
        clock / 3600,
        clock % 3600 / 60,
        clock % 60
    )
}

/// Exactly `count` ASCII digits.
fn digits(text: &str, count: usize) -> Option<u64> {
    (text.len() == count && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn named(text: &str, names: &[&str]) -> Option<()> {
    names
        .iter()
        .any(|name| name.eq_ignore_ascii_case(text))
        .then_some(())
}

fn gmt(zone: &str) -> Option<()> {
    zone.eq_ignore_ascii_case("GMT").then_some(())
}

fn month_number(text: &str) -> Option<u64> {
    let index = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(text))?;
    Some(index as u64 + 1)
}

fn leap(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date from 1970 on (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::DATE;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn rfc9110_5_6_7_all_three_date_formats_are_read() {
        let expected = at(784_111_777);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(DATE, text.parse().unwrap());
            assert_eq!(http_date(&headers, &DATE), Some(expected), "{text}");
        }
        assert_eq!(format(expected), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            parse("Tue, 29 Feb 2028 23:59:59 GMT")
                .map(format)
                .as_deref(),
            Some("Tue, 29 Feb 2028 23:59:59 GMT")
        );
        assert_eq!(
            parse("Sun, 21 Nov 2286 04:46:39 GMT"),
            Some(at(10_000_039_599))
        );
    }

    #[test]
    fn formatting_and_parsing_agree_over_four_centuries() {
        for seconds in (0..13_000_000_000u64).step_by(9_973_331) {
            let time = at(seconds);
            assert_eq!(parse(&format(time)), Some(time), "{}", format(time));
        }
    }

    #[test]
    fn rfc9110_5_6_7_names_in_any_case_and_a_wrong_day_name_are_read() {
        let expected = parse("Thu, 18 Aug 2050 02:01:18 GMT").unwrap();
        for text in [
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gMT",
            "Mon, 18 Aug 2050 02:01:18 GMT",
            "Thursday, 18-Aug-50 02:01:18 GMT",
        ] {
            assert_eq!(parse(text), Some(expected), "{text}");
        }
        assert!(parse("Thu Aug  8 02:01:18 2050").is_some());
    }

    #[test]
    fn rfc9110_5_6_7_what_breaks_the_grammar_is_no_date() {
        for text in [
            "0",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:01:18 GMT",
            "Fri, 31 Dec 1965 23:59:59 GMT",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
