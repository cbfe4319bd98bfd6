//! The stored form of request headers: a small length-prefixed binary encoding that keeps every
//! value byte for byte (including values that are not UTF-8) and every repeated header, and that
//! any backend can keep in a BLOB / BYTEA column. Decoding never trusts the bytes it is given.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Version byte of the encoding.
const VERSION: u8 = 1;

/// Why stored headers could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored headers are damaged: {0}")]
pub struct DecodeError(&'static str);

/// Encode headers in their iteration order.
pub fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let size: usize = headers.iter().map(|(n, v)| 6 + n.as_str().len() + v.len()).sum();
    let mut out = Vec::with_capacity(5 + size);
    out.push(VERSION);
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        // Header names are bounded far below u16::MAX by the relay's header limit.
        out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Decode what [`encode_headers`] wrote.
pub fn decode_headers(mut bytes: &[u8]) -> Result<HeaderMap, DecodeError> {
    let version = take(&mut bytes, 1)?[0];
    if version != VERSION {
        return Err(DecodeError("unknown header encoding version"));
    }
    let count = u32::from_be_bytes(array(take(&mut bytes, 4)?)?);
    // Each entry takes at least 6 bytes: a count larger than that is a lie, not an allocation.
    if count as usize > bytes.len() / 6 {
        return Err(DecodeError("header count larger than the data"));
    }
    let mut headers = HeaderMap::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = u16::from_be_bytes(array(take(&mut bytes, 2)?)?) as usize;
        let name = HeaderName::from_bytes(take(&mut bytes, name_len)?)
            .map_err(|_| DecodeError("invalid header name"))?;
        let value_len = u32::from_be_bytes(array(take(&mut bytes, 4)?)?) as usize;
        let value = HeaderValue::from_bytes(take(&mut bytes, value_len)?)
            .map_err(|_| DecodeError("invalid header value"))?;
        headers.append(name, value);
    }
    if !bytes.is_empty() {
        return Err(DecodeError("trailing bytes after the headers"));
    }
    Ok(headers)
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if bytes.len() < n {
        return Err(DecodeError("truncated"));
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Ok(head)
}

fn array<const N: usize>(b: &[u8]) -> Result<[u8; N], DecodeError> {
    b.try_into().map_err(|_| DecodeError("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_repeats_order_and_raw_bytes() {
        let mut h = HeaderMap::new();
        h.append("x-multi", HeaderValue::from_static("one"));
        h.append("x-multi", HeaderValue::from_static("two"));
        h.append("x-bin", HeaderValue::from_bytes(b"caf\xe9 \x80").unwrap());
        h.append("content-type", HeaderValue::from_static("application/json"));
        let back = decode_headers(&encode_headers(&h)).unwrap();
        assert_eq!(back, h);
        let multi: Vec<_> = back.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"]);
        assert_eq!(back["x-bin"].as_bytes(), b"caf\xe9 \x80");
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        let good = {
            let mut h = HeaderMap::new();
            h.append("a", HeaderValue::from_static("b"));
            encode_headers(&h)
        };
        for cut in 0..good.len() {
            assert!(decode_headers(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_headers(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_headers(&[2, 0, 0, 0, 0]).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_headers(&trailing).is_err());
        assert_eq!(decode_headers(&[1, 0, 0, 0, 0]).unwrap().len(), 0);
    }
}
