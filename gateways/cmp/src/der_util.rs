//! A minimal DER TLV walker and writer.
//!
//! Why not only the `der` types: the bytes a MAC or signature covers must be exactly the bytes
//! received (ProtectedPart = header ‖ body as sent), and CRMF proof of possession signs the
//! CertRequest DER as the client encoded it. Splitting the raw TLVs keeps those bytes intact
//! instead of trusting a decode/re-encode round trip. Only definite, minimal lengths are
//! accepted (DER), bounded by the input slice.

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    /// The identifier octet (single-byte tags only; CMP needs no high tag numbers).
    pub tag: u8,
    /// The whole element, header included.
    pub raw: &'a [u8],
    /// The content octets.
    pub content: &'a [u8],
}

/// Reads one TLV from the front of `input`; returns it and the rest.
pub fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *input.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2usize)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        if bytes[0] == 0 {
            return None;
        }
        let mut len = 0usize;
        for b in bytes {
            len = (len << 8) | usize::from(*b);
        }
        if len < 0x80 {
            return None;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    let raw = input.get(..end)?;
    Some((
        Tlv {
            tag,
            raw,
            content: &raw[hdr..],
        },
        &input[end..],
    ))
}

/// All TLVs in `input` in order; `None` if any is malformed or bytes are left over.
pub fn read_all(mut input: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (t, rest) = read_tlv(input)?;
        out.push(t);
        input = rest;
    }
    Some(out)
}

/// Encodes one TLV.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded elements.
pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A small non-negative INTEGER.
pub fn int(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let mut c = bytes[skip..].to_vec();
    if c[0] & 0x80 != 0 {
        c.insert(0, 0);
    }
    tlv(0x02, &c)
}

/// An OCTET STRING.
pub fn octets(v: &[u8]) -> Vec<u8> {
    tlv(0x04, v)
}

/// A BIT STRING with no unused bits.
pub fn bits(v: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(v.len() + 1);
    c.push(0);
    c.extend_from_slice(v);
    tlv(0x03, &c)
}

/// A UTF8String.
pub fn utf8(s: &str) -> Vec<u8> {
    tlv(0x0c, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip_and_non_minimal_is_refused() {
        let content = vec![7u8; 300];
        let enc = tlv(0x04, &content);
        assert_eq!(&enc[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (t, rest) = read_tlv(&enc).expect("reads back");
        assert_eq!(t.content, &content[..]);
        assert!(rest.is_empty());
        // 0x81 0x05: a long form for a short length is not DER.
        assert!(read_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).is_none());
        // Truncated.
        assert!(read_tlv(&[0x04, 0x05, 1]).is_none());
        assert_eq!(int(128), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(int(0), vec![0x02, 0x01, 0x00]);
    }
}
