//! A bounded BER → DER normaliser for the CMS wrappers SCEP clients send.
//!
//! Older Cisco IOS, some MDM stacks and OpenSSL's `cms`/`smime` in streaming mode (`-stream`,
//! the default of `smime -sign` without `-binary` settings) emit BER: indefinite lengths on
//! ContentInfo, SignedData, EncapsulatedContentInfo and EnvelopedData, and the (encapsulated or
//! encrypted) content as a constructed OCTET STRING of chunks. The `der`/`cms` types decode
//! DER only, so before decoding, [`normalise`] rewrites exactly those two BER forms:
//!
//! - an indefinite length becomes the definite, minimal one (the end-of-contents octets go);
//! - a constructed OCTET STRING becomes the primitive one holding the concatenated chunks
//!   (RFC 5652 §5.4: the messageDigest covers these concatenated content octets, so the digest
//!   is unchanged by the rewrite).
//!
//! Everything else is copied byte for byte: a subtree without either form (a certificate, a
//! DER SignerInfo) is not re-encoded, so the signer certificate a RenewalReq is compared with
//! and the signature value stay exactly as sent. Other BER freedoms (non-minimal lengths,
//! unsorted SETs, constructed strings of other types) are left for the DER decoder to refuse as
//! before. The client's signature is verified over the DER encoding of the signed attributes
//! (RFC 5652 §5.4), which is what the decoder re-encodes whatever the wire form was.
//!
//! [`normalise_enveloped`] also turns EncryptedContentInfo's `[0] IMPLICIT` encryptedContent,
//! which a streaming encoder sends constructed, into the primitive form; only there, because a
//! constructed `[0]` elsewhere (eContent is `[0] EXPLICIT`) is a different thing.
//!
//! Bounds (I-8, fuzzed by `fuzz/fuzz_targets/scep_message.rs`): input at most
//! [`crate::MAX_MESSAGE_LEN`], nesting depth [`MAX_DEPTH`] (recursion is bounded by it),
//! at most [`MAX_ELEMENTS`] elements, identifier octets at most 4, length octets at most 4.
//! DER input (the common case) is returned borrowed, without a copy.

use std::borrow::Cow;

/// Deepest nesting accepted. A SCEP message nests about 12 levels (ContentInfo → SignedData →
/// certificates → certificate → extensions → …); 48 leaves room for odd certificates.
pub const MAX_DEPTH: usize = 48;
/// Most TLV elements in one message (a 64 KiB message of real certificates has a few
/// thousand; the bound stops a message of empty elements from costing more than that).
pub const MAX_ELEMENTS: usize = 16_384;

/// Why bytes are not BER this normaliser accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed BER: {0}")]
pub struct BerError(&'static str);

/// One TLV of the input.
struct Node<'a> {
    /// The whole element as received.
    raw: &'a [u8],
    /// Identifier octets (replaced when a constructed string is made primitive).
    tag: Cow<'a, [u8]>,
    content: Content<'a>,
    /// Re-encode instead of copying `raw`.
    dirty: bool,
}

enum Content<'a> {
    Primitive(Cow<'a, [u8]>),
    Constructed(Vec<Node<'a>>),
}

struct Parser {
    elements: usize,
}

const OCTET_STRING: u8 = 0x04;
const OCTET_STRING_CONSTRUCTED: u8 = 0x24;
const SEQUENCE: u8 = 0x30;
const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;

impl Parser {
    /// Parses one element at the start of `input`; returns it and the bytes after it.
    fn element<'a>(
        &mut self,
        input: &'a [u8],
        depth: usize,
    ) -> Result<(Node<'a>, &'a [u8]), BerError> {
        if depth > MAX_DEPTH {
            return Err(BerError("nested too deeply"));
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(BerError("too many elements"));
        }
        let first = *input.first().ok_or(BerError("truncated identifier"))?;
        let mut tag_len = 1;
        if first & 0x1f == 0x1f {
            // High tag number form: continuation octets while bit 8 is set.
            loop {
                let b = *input.get(tag_len).ok_or(BerError("truncated identifier"))?;
                tag_len += 1;
                if tag_len > 4 {
                    return Err(BerError("tag number too large"));
                }
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        let constructed = first & 0x20 != 0;
        let len_byte = *input.get(tag_len).ok_or(BerError("truncated length"))?;
        let mut pos = tag_len + 1;
        let definite = match len_byte {
            0x80 => None,
            0xff => return Err(BerError("reserved length octet")),
            n if n & 0x80 == 0 => Some(usize::from(n)),
            n => {
                let k = usize::from(n & 0x7f);
                if k > 4 {
                    return Err(BerError("length too large"));
                }
                let bytes = input
                    .get(pos..pos + k)
                    .ok_or(BerError("truncated length"))?;
                pos += k;
                Some(
                    bytes
                        .iter()
                        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
                )
            }
        };
        let tag = &input[..tag_len];
        if first == 0 {
            return Err(BerError("unexpected end-of-contents"));
        }
        match definite {
            Some(len) => {
                let end = pos.checked_add(len).ok_or(BerError("length overflow"))?;
                let body = input.get(pos..end).ok_or(BerError("truncated content"))?;
                let raw = &input[..end];
                let content = if constructed {
                    let mut children = Vec::new();
                    let mut rest = body;
                    while !rest.is_empty() {
                        let (child, after) = self.element(rest, depth + 1)?;
                        children.push(child);
                        rest = after;
                    }
                    Content::Constructed(children)
                } else {
                    Content::Primitive(Cow::Borrowed(body))
                };
                let node = finish(raw, tag, content, false)?;
                Ok((node, &input[end..]))
            }
            None => {
                if !constructed {
                    return Err(BerError("indefinite length on a primitive element"));
                }
                let mut children = Vec::new();
                let mut rest = &input[pos..];
                loop {
                    if rest.starts_with(&[0, 0]) {
                        rest = &rest[2..];
                        break;
                    }
                    if rest.is_empty() {
                        return Err(BerError("missing end-of-contents"));
                    }
                    let (child, after) = self.element(rest, depth + 1)?;
                    children.push(child);
                    rest = after;
                }
                let consumed = input.len() - rest.len();
                let node = finish(
                    &input[..consumed],
                    tag,
                    Content::Constructed(children),
                    true,
                )?;
                Ok((node, rest))
            }
        }
    }
}

/// Builds a node; a constructed OCTET STRING is made primitive here.
fn finish<'a>(
    raw: &'a [u8],
    tag: &'a [u8],
    content: Content<'a>,
    indefinite: bool,
) -> Result<Node<'a>, BerError> {
    if tag == [OCTET_STRING_CONSTRUCTED] {
        let Content::Constructed(children) = content else {
            return Err(BerError("constructed OCTET STRING expected"));
        };
        return Ok(Node {
            raw,
            tag: Cow::Borrowed(&[OCTET_STRING]),
            content: Content::Primitive(Cow::Owned(concat_octets(children)?)),
            dirty: true,
        });
    }
    let dirty = indefinite
        || match &content {
            Content::Constructed(children) => children.iter().any(|c| c.dirty),
            Content::Primitive(_) => false,
        };
    Ok(Node {
        raw,
        tag: Cow::Borrowed(tag),
        content,
        dirty,
    })
}

/// The content octets of the chunks of a constructed string, each an OCTET STRING (nested
/// constructed ones were already made primitive).
fn concat_octets(children: Vec<Node<'_>>) -> Result<Vec<u8>, BerError> {
    let mut out = Vec::new();
    for c in children {
        match (&*c.tag, c.content) {
            ([OCTET_STRING], Content::Primitive(b)) => out.extend_from_slice(&b),
            _ => return Err(BerError("a string chunk is not an OCTET STRING")),
        }
    }
    Ok(out)
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(node: &Node<'_>, out: &mut Vec<u8>) {
    if !node.dirty {
        out.extend_from_slice(node.raw);
        return;
    }
    out.extend_from_slice(&node.tag);
    match &node.content {
        Content::Primitive(b) => {
            push_len(out, b.len());
            out.extend_from_slice(b);
        }
        Content::Constructed(children) => {
            let mut body = Vec::new();
            for c in children {
                encode(c, &mut body);
            }
            push_len(out, body.len());
            out.extend_from_slice(&body);
        }
    }
}

fn parse(input: &[u8]) -> Result<Node<'_>, BerError> {
    if input.len() > crate::MAX_MESSAGE_LEN {
        return Err(BerError("message too large"));
    }
    let mut p = Parser { elements: 0 };
    let (node, rest) = p.element(input, 0)?;
    if !rest.is_empty() {
        return Err(BerError("trailing bytes"));
    }
    Ok(node)
}

fn output<'a>(input: &'a [u8], node: &Node<'_>) -> Cow<'a, [u8]> {
    if !node.dirty {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len() + 16);
    encode(node, &mut out);
    Cow::Owned(out)
}

/// Normalises one BER element (a ContentInfo) as described in the module documentation.
/// DER input comes back borrowed and unchanged.
pub fn normalise(input: &[u8]) -> Result<Cow<'_, [u8]>, BerError> {
    let node = parse(input)?;
    Ok(output(input, &node))
}

/// [`normalise`] for a ContentInfo holding EnvelopedData, plus EncryptedContentInfo's
/// `[0] IMPLICIT` encryptedContent sent constructed (chunks) made primitive. Input that is not
/// shaped like an EnvelopedData ContentInfo is only [`normalise`]d: the decoder refuses it.
pub fn normalise_enveloped(input: &[u8]) -> Result<Cow<'_, [u8]>, BerError> {
    let mut node = parse(input)?;
    if let Some(eci) = encrypted_content_info(&mut node) {
        let Content::Constructed(children) = &mut eci.content else {
            return Ok(output(input, &node));
        };
        if let Some(i) = children
            .iter()
            .position(|c| *c.tag == [CONTEXT_0_CONSTRUCTED])
        {
            let chunks = std::mem::replace(&mut children[i].content, Content::Constructed(vec![]));
            let Content::Constructed(chunks) = chunks else {
                return Err(BerError("encryptedContent"));
            };
            children[i].content = Content::Primitive(Cow::Owned(concat_octets(chunks)?));
            children[i].tag = Cow::Borrowed(&[0x80]);
            children[i].dirty = true;
            eci.dirty = true;
            // The ancestors are re-encoded too.
            mark_path_dirty(&mut node);
        }
    }
    Ok(output(input, &node))
}

/// ContentInfo → `[0]` → EnvelopedData → the first SEQUENCE (EncryptedContentInfo; before it
/// come version, originatorInfo `[0]` and the recipientInfos SET).
fn encrypted_content_info<'n, 'a>(ci: &'n mut Node<'a>) -> Option<&'n mut Node<'a>> {
    let Content::Constructed(ci_children) = &mut ci.content else {
        return None;
    };
    let explicit = ci_children.get_mut(1)?;
    if *explicit.tag != [CONTEXT_0_CONSTRUCTED] {
        return None;
    }
    let Content::Constructed(inner) = &mut explicit.content else {
        return None;
    };
    let env = inner.first_mut()?;
    if *env.tag != [SEQUENCE] {
        return None;
    }
    let Content::Constructed(env_children) = &mut env.content else {
        return None;
    };
    env_children.iter_mut().find(|c| *c.tag == [SEQUENCE])
}

/// Marks ContentInfo → `[0]` → EnvelopedData dirty after a change below them.
fn mark_path_dirty(ci: &mut Node<'_>) {
    ci.dirty = true;
    if let Content::Constructed(c) = &mut ci.content
        && let Some(explicit) = c.get_mut(1)
    {
        explicit.dirty = true;
        if let Content::Constructed(inner) = &mut explicit.content
            && let Some(env) = inner.first_mut()
        {
            env.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_is_returned_borrowed() {
        let der = [0x30, 0x06, 0x04, 0x01, 0xaa, 0x02, 0x01, 0x05];
        assert!(matches!(normalise(&der), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn indefinite_lengths_and_chunked_octet_strings_become_der() {
        // SEQUENCE (indefinite) { OCTET STRING constructed (indefinite) { "ab", "c" }, INTEGER 5 }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x02,
            0x01, 0x05, 0x00, 0x00,
        ];
        let der = normalise(&ber).expect("normalises");
        assert_eq!(
            &*der,
            &[0x30, 0x08, 0x04, 0x03, b'a', b'b', b'c', 0x02, 0x01, 0x05]
        );
        // Idempotent.
        assert!(matches!(normalise(&der), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn long_definite_lengths_are_minimal() {
        let mut ber = vec![0x30, 0x80, 0x04, 0x81, 0xc8];
        ber.extend([7u8; 200]);
        ber.extend([0, 0]);
        let der = normalise(&ber).expect("normalises");
        assert_eq!(&der[..5], &[0x30, 0x81, 0xcb, 0x04, 0x81]);
        assert_eq!(der.len(), 3 + 3 + 200);
    }

    #[test]
    fn malformed_ber_is_refused() {
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], MAX_DEPTH + 2)
            .flatten()
            .collect();
        for (bad, why) in [
            (&[0x30, 0x80, 0x02, 0x01, 0x05][..], "no end-of-contents"),
            (&[0x04, 0x80, 0x00, 0x00][..], "primitive indefinite"),
            (&[0x30, 0x03, 0x02, 0x01][..], "truncated"),
            (&[0x30, 0x00, 0x00][..], "trailing bytes"),
            (
                &[0x24, 0x80, 0x02, 0x01, 0x05, 0x00, 0x00][..],
                "chunk not OCTET STRING",
            ),
            (&[0x30, 0x85, 1, 0, 0, 0, 0][..], "5 length octets"),
            (&[0x30, 0xff][..], "reserved length"),
            (&[0x00, 0x00][..], "bare end-of-contents"),
            (
                &[0x1f, 0x81, 0x81, 0x81, 0x01, 0x00][..],
                "tag number too large",
            ),
            (&deep[..], "too deep"),
            (&[][..], "empty"),
        ] {
            assert!(normalise(bad).is_err(), "{why} must be refused");
        }
        let many: Vec<u8> = {
            let body: Vec<u8> = std::iter::repeat_n([0x05u8, 0x00], MAX_ELEMENTS)
                .flatten()
                .collect();
            let mut v = vec![0x30, 0x80];
            v.extend(body);
            v.extend([0, 0]);
            v
        };
        assert_eq!(normalise(&many), Err(BerError("too many elements")));
    }

    #[test]
    fn encrypted_content_is_made_primitive_only_in_encrypted_content_info() {
        // ContentInfo { OID, [0] { EnvelopedData { INTEGER 0, SET {}, SEQUENCE { OID, SEQUENCE {},
        //   [0] constructed { "xy", "z" } } } } }, all indefinite.
        let ber = [
            0x30, 0x80, 0x06, 0x01, 0x2a, 0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x00, 0x31, 0x00,
            0x30, 0x80, 0x06, 0x01, 0x2a, 0x30, 0x00, 0xa0, 0x80, 0x04, 0x02, b'x', b'y', 0x04,
            0x01, b'z', 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let der = normalise_enveloped(&ber).expect("normalises");
        assert_eq!(
            &*der,
            &[
                0x30, 0x18, 0x06, 0x01, 0x2a, 0xa0, 0x13, 0x30, 0x11, 0x02, 0x01, 0x00, 0x31, 0x00,
                0x30, 0x0a, 0x06, 0x01, 0x2a, 0x30, 0x00, 0x80, 0x03, b'x', b'y', b'z'
            ]
        );
        // The plain normaliser keeps the [0] constructed (it cannot know it is IMPLICIT).
        let generic = normalise(&ber).expect("normalises");
        assert!(generic.windows(2).any(|w| w == [0xa0, 0x07]));
    }
}
