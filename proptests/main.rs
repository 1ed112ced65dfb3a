//! Property tests for respool's framing: whatever way a byte stream is split
//! into reads, the decoders produce the same frames; encode∘decode is the
//! identity; and no byte sequence makes them panic.

use bytes::BytesMut;
use proptest::prelude::*;
use redis_protocol::resp2::decode::decode as resp2_decode;
use redis_protocol::resp2::encode::encode as resp2_encode;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};
use respool::codec::{first_request_len, ReplyDecoder, Request, RequestDecoder};
use tokio_util::codec::Decoder;

fn encode_resp2(frame: &OwnedFrame) -> Vec<u8> {
    let mut buf = vec![0u8; frame.encode_len(false)];
    let n = resp2_encode(&mut buf, frame, false).expect("buffer sized by encode_len");
    buf.truncate(n);
    buf
}

/// Feeds `input` to a decoder in pieces cut at `cuts` (positions, any order).
fn decode_in_pieces<D: Decoder>(
    mut decoder: D,
    input: &[u8],
    cuts: &[usize],
) -> Result<Vec<D::Item>, D::Error> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        while let Some(item) = decoder.decode(&mut buf)? {
            out.push(item);
        }
    }
    Ok(out)
}

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        // Bytes that look like protocol inside a bulk string must stay data.
        Just(b"*1\r\n$4\r\nPING\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
    ]
}

fn request() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(arg(), 1..8)
}

fn reply_frame() -> impl Strategy<Value = OwnedFrame> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,20}".prop_map(|s| OwnedFrame::SimpleString(s.into_bytes())),
        "[A-Z]{1,8} [a-z ]{0,20}".prop_map(OwnedFrame::Error),
        any::<i64>().prop_map(OwnedFrame::Integer),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(OwnedFrame::BulkString),
        Just(OwnedFrame::Null),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        proptest::collection::vec(inner, 0..8).prop_map(OwnedFrame::Array)
    })
}

/// RESP3 frames as bytes, built by hand (maps, sets, pushes, attributes,
/// doubles, booleans, big numbers, verbatim strings, blob errors, nulls).
fn resp3_frame() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(b"_\r\n".to_vec()),
        Just(b"#t\r\n".to_vec()),
        any::<f64>().prop_map(|d| format!(",{d}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!("({n}1234567890\r\n").into_bytes()),
        "[a-z]{0,12}".prop_map(|s| format!("={}\r\ntxt:{s}\r\n", s.len() + 4).into_bytes()),
        "[a-z]{0,12}".prop_map(|s| format!("!{}\r\n{s}\r\n", s.len()).into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        (
            prop_oneof![Just('*'), Just('~'), Just('>'), Just('%'), Just('|')],
            proptest::collection::vec(inner.clone(), 0..6),
            inner,
        )
            .prop_map(|(kind, items, annotated)| {
                let mut out = Vec::new();
                let items: Vec<Vec<u8>> = if kind == '%' || kind == '|' {
                    // Maps and attributes hold key/value pairs.
                    let even = items.len() / 2 * 2;
                    items.into_iter().take(even).collect()
                } else {
                    items
                };
                let count = if kind == '%' || kind == '|' {
                    items.len() / 2
                } else {
                    items.len()
                };
                out.extend_from_slice(format!("{kind}{count}\r\n").as_bytes());
                for item in items {
                    out.extend_from_slice(&item);
                }
                if kind == '|' {
                    out.extend_from_slice(&annotated);
                }
                out
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Requests encoded by `redis-protocol` decode to the same arguments and
    /// keep their exact bytes, however the stream is split.
    #[test]
    fn requests_survive_any_split(reqs in proptest::collection::vec(request(), 1..12), cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let mut stream = Vec::new();
        let mut encoded = Vec::new();
        for args in &reqs {
            let frame = OwnedFrame::Array(args.iter().map(|a| OwnedFrame::BulkString(a.clone())).collect());
            let bytes = encode_resp2(&frame);
            stream.extend_from_slice(&bytes);
            encoded.push(bytes);
        }
        let decoded = decode_in_pieces(RequestDecoder::default(), &stream, &cuts).expect("valid requests");
        prop_assert_eq!(decoded.len(), reqs.len());
        for ((req, args), bytes) in decoded.iter().zip(&reqs).zip(&encoded) {
            prop_assert_eq!(req.raw(), &bytes[..]);
            let got: Vec<&[u8]> = req.args().collect();
            let want: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(req.name(), &args[0][..]);
        }
    }

    /// A run of decoded requests joined back to back (as a client's pipeline
    /// reaches its lane) is split again at exactly the request boundaries.
    #[test]
    fn runs_split_back_into_their_requests(reqs in proptest::collection::vec(request(), 1..12)) {
        let mut run = Vec::new();
        let mut lens = Vec::new();
        for args in &reqs {
            let bytes = encode_resp2(&OwnedFrame::Array(args.iter().map(|a| OwnedFrame::BulkString(a.clone())).collect()));
            lens.push(bytes.len());
            run.extend_from_slice(&bytes);
        }
        let mut at = 0;
        for len in lens {
            prop_assert_eq!(first_request_len(&run[at..]), Some(len));
            at += len;
        }
        prop_assert_eq!(at, run.len());
        prop_assert_eq!(first_request_len(&run[at..]), None);
    }

    /// `Request::from_args` and the decoder agree (encode∘decode = id).
    #[test]
    fn request_encoding_round_trips(args in request()) {
        let req = Request::from_args(&args);
        let decoded = decode_in_pieces(RequestDecoder::default(), req.raw(), &[]).expect("valid");
        prop_assert_eq!(decoded, vec![req]);
    }

    /// Replies are split into exactly the frames that were encoded, and each
    /// decodes back (through redis-protocol) to the original frame.
    #[test]
    fn resp2_replies_survive_any_split(frames in proptest::collection::vec(reply_frame(), 1..10), cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let encoded: Vec<Vec<u8>> = frames.iter().map(encode_resp2).collect();
        let stream: Vec<u8> = encoded.concat();
        let split = decode_in_pieces(ReplyDecoder::default(), &stream, &cuts).expect("valid replies");
        prop_assert_eq!(split.len(), frames.len());
        for ((bytes, want), frame) in split.iter().zip(&encoded).zip(&frames) {
            prop_assert_eq!(&bytes[..], &want[..]);
            let (back, used) = resp2_decode(bytes).expect("decodes").expect("complete");
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(&back, frame);
        }
    }

    /// The same for RESP3 types, including attributes and pushes.
    #[test]
    fn resp3_replies_survive_any_split(frames in proptest::collection::vec(resp3_frame(), 1..8), cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let stream: Vec<u8> = frames.concat();
        let split = decode_in_pieces(ReplyDecoder::default(), &stream, &cuts).expect("valid replies");
        let got: Vec<Vec<u8>> = split.iter().map(|b| b.to_vec()).collect();
        prop_assert_eq!(got, frames);
    }

    /// No byte sequence panics either decoder, split anywhere, and a request
    /// decoder error is final for that input (the client is closed).
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let whole = decode_in_pieces(RequestDecoder::default(), &input, &[]);
        let pieces = decode_in_pieces(RequestDecoder::default(), &input, &cuts);
        prop_assert_eq!(whole.is_ok(), pieces.is_ok());
        if let (Ok(a), Ok(b)) = (&whole, &pieces) {
            prop_assert_eq!(a, b);
        }
        let whole = decode_in_pieces(ReplyDecoder::default(), &input, &[]);
        let pieces = decode_in_pieces(ReplyDecoder::default(), &input, &cuts);
        if let (Ok(a), Ok(b)) = (&whole, &pieces) {
            prop_assert_eq!(a, b);
        }
    }

    /// Requests are forwarded verbatim, so whatever the decoder accepts must
    /// be the canonical encoding of its arguments: a length with a leading
    /// zero (`$03`, `*01`), which Redis refuses, is refused here too.
    #[test]
    fn leading_zero_lengths_are_refused(reqs in proptest::collection::vec(request(), 1..4), pick in any::<usize>()) {
        let mut stream = Vec::new();
        let mut headers = Vec::new();
        for args in &reqs {
            headers.push(stream.len());
            stream.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                headers.push(stream.len());
                stream.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                stream.extend_from_slice(a);
                stream.extend_from_slice(b"\r\n");
            }
        }
        let at = headers[pick % headers.len()];
        stream.insert(at + 1, b'0');
        prop_assert!(decode_in_pieces(RequestDecoder::default(), &stream, &[]).is_err());
    }

    /// Protocol-looking garbage: valid prefixes with corrupted tails.
    #[test]
    fn corrupted_requests_never_panic(reqs in proptest::collection::vec(request(), 1..4), flip in any::<usize>(), byte in any::<u8>()) {
        let mut stream: Vec<u8> = reqs.iter().flat_map(|r| Request::from_args(r).raw().to_vec()).collect();
        let at = flip % stream.len();
        stream[at] = byte;
        let decoded: Vec<Request> =
            decode_in_pieces(RequestDecoder::default(), &stream, &[at]).unwrap_or_default();
        for req in decoded {
            // Anything accepted is canonical: forwarding it is safe.
            let args: Vec<&[u8]> = req.args().collect();
            let canonical = Request::from_args(&args);
            prop_assert_eq!(canonical.raw(), req.raw());
        }
        let _ = decode_in_pieces(ReplyDecoder::default(), &stream, &[at]);
    }
}
