//! The disk tier's file of one stored response: a head (its key, variant and tags, read
//! alone when the tier is opened) with a checksum of its own, then the response (status,
//! timing, fields, content, codings), and a checksum of the whole. Numbers little-endian,
//! strings and contents length-prefixed; anything that does not check out is corrupt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::age::Timing;
use crate::encoding::OFFERED;
use crate::key::CacheKey;
use crate::store::Object;
use crate::vary::Variant;

/// The first bytes of a record, with its format's version.
const MAGIC: &[u8; 5] = b"MRDC\x01";

/// Bytes before the head: the magic and the head's length.
pub const PREFIX: usize = MAGIC.len() + 4;

/// A record that does not check out.
#[derive(Debug, thiserror::Error)]
#[error("corrupt cache record: {0}")]
pub struct Corrupt(&'static str);

/// What the head of a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The response's key.
    pub key: CacheKey,
    /// The request field values it was selected by.
    pub variant: Variant,
    /// Its purge tags.
    pub tags: Vec<String>,
}

/// The record of `object` stored under `key`.
pub fn encode(key: &CacheKey, object: &Object) -> Vec<u8> {
    let mut head = Vec::new();
    put_str(&mut head, key.as_str().as_bytes());
    put_u32(&mut head, object.variant.fields().len() as u32);
    for (name, value) in object.variant.fields() {
        put_str(&mut head, name.as_str().as_bytes());
        head.push(u8::from(value.is_some()));
        put_str(&mut head, value.as_deref().unwrap_or_default().as_bytes());
    }
    put_u32(&mut head, object.tags.len() as u32);
    for tag in &object.tags {
        put_str(&mut head, tag.as_bytes());
    }
    let mut out = Vec::with_capacity(head.len() + object.body.len() + 512);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, head.len() as u32);
    out.extend_from_slice(&head);
    put_u32(&mut out, crc32fast::hash(&head));
    out.extend_from_slice(&object.status.as_u16().to_le_bytes());
    put_time(&mut out, object.timing.response_time);
    put_duration(&mut out, object.timing.initial_age);
    put_duration(&mut out, object.lifetime);
    let headers = object.headers();
    put_u32(&mut out, headers.len() as u32);
    for (name, value) in &headers {
        put_str(&mut out, name.as_str().as_bytes());
        put_str(&mut out, value.as_bytes());
    }
    put_str(&mut out, &object.body);
    out.push(u8::from(object.is_compressible()));
    put_u32(&mut out, object.codings().len() as u32);
    for (coding, content) in object.codings() {
        put_str(&mut out, coding.token().as_bytes());
        put_str(&mut out, content);
    }
    let crc = crc32fast::hash(&out);
    put_u32(&mut out, crc);
    out
}

/// The length of the head of a record that starts with `prefix` ([`PREFIX`] bytes).
pub fn head_length(prefix: &[u8]) -> Result<usize, Corrupt> {
    let mut reader = Reader(prefix);
    if reader.take(MAGIC.len())? != MAGIC {
        return Err(Corrupt("not a record of this format"));
    }
    Ok(reader.u32()? as usize)
}

/// The head of a record, from its first [`PREFIX`] + [`head_length`] + 4 bytes.
pub fn decode_head(bytes: &[u8]) -> Result<Head, Corrupt> {
    let length = head_length(bytes.get(..PREFIX).ok_or(Corrupt("short"))?)?;
    let mut reader = Reader(&bytes[PREFIX..]);
    let head = reader.take(length)?;
    if reader.u32()? != crc32fast::hash(head) {
        return Err(Corrupt("the head's checksum differs"));
    }
    let mut reader = Reader(head);
    let key = CacheKey::from_stored(reader.string()?);
    let mut fields = Vec::new();
    for _ in 0..reader.u32()? {
        let name = HeaderName::from_bytes(reader.bytes()?).map_err(|_| Corrupt("field name"))?;
        let present = reader.u8()? == 1;
        let value = reader.string()?;
        fields.push((name, present.then_some(value)));
    }
    let mut tags = Vec::new();
    for _ in 0..reader.u32()? {
        tags.push(reader.string()?);
    }
    Ok(Head {
        key,
        variant: Variant::from_fields(fields),
        tags,
    })
}

/// The key and the response of a whole record, both checksums checked.
pub fn decode(bytes: &[u8]) -> Result<(CacheKey, Object), Corrupt> {
    let (body, crc) = bytes.split_last_chunk::<4>().ok_or(Corrupt("short"))?;
    if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
        return Err(Corrupt("the record's checksum differs"));
    }
    let head = decode_head(body)?;
    let length = head_length(&body[..PREFIX])?;
    let mut reader = Reader(&body[PREFIX + length + 4..]);
    let status = StatusCode::from_u16(u16::from_le_bytes(
        reader.take(2)?.try_into().map_err(|_| Corrupt("status"))?,
    ))
    .map_err(|_| Corrupt("status"))?;
    let response_time = reader.time()?;
    let initial_age = reader.duration()?;
    let lifetime = reader.duration()?;
    let mut headers = HeaderMap::new();
    for _ in 0..reader.u32()? {
        let name = HeaderName::from_bytes(reader.bytes()?).map_err(|_| Corrupt("field name"))?;
        let value = HeaderValue::from_bytes(reader.bytes()?).map_err(|_| Corrupt("field value"))?;
        headers.append(name, value);
    }
    let content = Bytes::copy_from_slice(reader.bytes()?);
    let compressible = reader.u8()? == 1;
    let timing = Timing {
        response_time,
        initial_age,
    };
    let mut object = Object::new(
        status,
        headers,
        content,
        timing,
        lifetime,
        head.variant,
        head.tags,
    );
    if compressible {
        object = object.compressible();
    }
    for _ in 0..reader.u32()? {
        let token = reader.string()?;
        let coding = OFFERED
            .into_iter()
            .find(|c| c.token() == token)
            .ok_or(Corrupt("coding"))?;
        object = object.with_coded(coding, Bytes::copy_from_slice(reader.bytes()?));
    }
    if !reader.0.is_empty() {
        return Err(Corrupt("bytes after the response"));
    }
    Ok((head.key, object))
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_duration(out: &mut Vec<u8>, duration: Duration) {
    out.extend_from_slice(&duration.as_secs().to_le_bytes());
    put_u32(out, duration.subsec_nanos());
}

fn put_time(out: &mut Vec<u8>, time: SystemTime) {
    put_duration(out, time.duration_since(UNIX_EPOCH).unwrap_or_default());
}

/// Reads a record's parts in order.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.0.len() < n {
            return Err(Corrupt("short"));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        let bytes = self.take(4)?.try_into().map_err(|_| Corrupt("short"))?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, Corrupt> {
        let bytes = self.take(8)?.try_into().map_err(|_| Corrupt("short"))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Corrupt> {
        let length = usize::try_from(self.u64()?).map_err(|_| Corrupt("length"))?;
        self.take(length)
    }

    fn string(&mut self) -> Result<String, Corrupt> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Corrupt("text"))
    }

    fn duration(&mut self) -> Result<Duration, Corrupt> {
        let seconds = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(Corrupt("duration"));
        }
        Ok(Duration::new(seconds, nanos))
    }

    fn time(&mut self) -> Result<SystemTime, Corrupt> {
        UNIX_EPOCH
            .checked_add(self.duration()?)
            .ok_or(Corrupt("time"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Coding;
    use crate::key::QueryKey;
    use crate::testing::fields;

    fn object() -> (CacheKey, Object) {
        let key = CacheKey::of_uri("https", "shop.example.com", "/a?b=1", &QueryKey::All);
        let request = fields(&[("accept-language", "en")]);
        let names = [
            HeaderName::from_static("accept-language"),
            HeaderName::from_static("x-absent"),
        ];
        let headers = fields(&[
            ("content-type", "text/plain"),
            ("set-thing", "1"),
            ("set-thing", "2"),
        ]);
        let timing = Timing {
            response_time: UNIX_EPOCH + Duration::new(1_800_000_000, 5),
            initial_age: Duration::from_secs(3),
        };
        let object = Object::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"hello"),
            timing,
            Duration::from_secs(60),
            Variant::of(&names, &request),
            vec!["t1".into(), "t2".into()],
        )
        .with_coded(Coding::Zstd, Bytes::from_static(b"z"));
        (key, object)
    }

    #[test]
    fn a_record_reads_back_as_the_response_it_was_made_of() {
        let (key, object) = object();
        let record = encode(&key, &object);
        let (read_key, read) = decode(&record).unwrap();
        assert_eq!(read_key, key);
        assert_eq!(read.status, object.status);
        assert_eq!(read.headers(), object.headers());
        assert_eq!(read.body, object.body);
        assert_eq!(read.timing, object.timing);
        assert_eq!(read.lifetime, object.lifetime);
        assert_eq!(read.variant, object.variant);
        assert_eq!(read.tags, object.tags);
        assert!(read.is_compressible());
        assert_eq!(read.coding(Coding::Zstd).unwrap(), "z");
        let head = decode_head(&record).unwrap();
        assert_eq!((head.key, head.tags), (key, object.tags.clone()));
    }

    #[test]
    fn a_changed_or_cut_record_is_corrupt() {
        let (key, object) = object();
        let record = encode(&key, &object);
        for at in [0, PREFIX + 2, record.len() - 10, record.len() - 1] {
            let mut changed = record.clone();
            changed[at] ^= 0x40;
            assert!(decode(&changed).is_err(), "byte {at} changed");
        }
        for length in [0, 3, PREFIX, record.len() / 2, record.len() - 1] {
            assert!(decode(&record[..length]).is_err(), "cut at {length}");
        }
    }
}
