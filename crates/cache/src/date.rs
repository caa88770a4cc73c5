//! HTTP-date fields (RFC 9110 §5.6.7): `Date`, `Expires`, `Last-Modified`, in any of the three
//! formats a recipient must accept.

use std::time::SystemTime;

use http::header::HeaderName;
use http::HeaderMap;

/// The time in the first line of field `name`, if it is a valid HTTP-date.
pub fn http_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

/// `time` as an IMF-fixdate.
pub fn format(time: SystemTime) -> String {
    httpdate::fmt_http_date(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::DATE;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc9110_5_6_7_all_three_date_formats_are_read() {
        let expected = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(DATE, text.parse().unwrap());
            assert_eq!(http_date(&headers, &DATE), Some(expected), "{text}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(DATE, "0".parse().unwrap());
        assert_eq!(http_date(&headers, &DATE), None);
        assert_eq!(format(expected), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
