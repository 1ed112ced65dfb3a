//! Framing and classification costs on the hot path, without any I/O.
//!
//! * `request_decode` — `RequestDecoder` over a pipeline of 100 small
//!   GET/SET requests and over one SET with a 1 MiB value (bytes/s).
//! * `reply_split` — `ReplyDecoder` over a 100-element array reply, a 1 MiB
//!   bulk reply, and a 10 000-element array reply delivered whole and in
//!   64 KiB pieces, and a 100 000-element one in 64 KiB pieces (bytes/s). All
//!   three should report about the same throughput: framing is linear in the
//!   bytes received, it does not re-scan a partial frame from its first byte
//!   on every read.
//! * `classify` — `command::classify` over a mix of command names (ops/s).
//!
//! Run: `cargo bench --bench codec` (add `-- --quick` for a fast look).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use respool::codec::{ReplyDecoder, Request, RequestDecoder};
use respool::command::classify;
use tokio_util::codec::Decoder;

/// Size of one read from a socket, as the reply is fed in the piecewise case.
const PIECE: usize = 64 * 1024;

/// Encodes a request the way a client library would (a RESP array of bulks).
fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// 100 requests alternating `SET key:i abc` and `GET key:i`.
fn small_pipeline() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..50 {
        let key = format!("key:{i:06}");
        out.extend(request(&[b"SET", key.as_bytes(), b"abc"]));
        out.extend(request(&[b"GET", key.as_bytes()]));
    }
    out
}

/// An array reply of `n` 10-byte bulk strings (an LRANGE or MGET reply).
fn array_reply(n: usize) -> Vec<u8> {
    let mut out = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        out.extend_from_slice(format!("$10\r\nvalue{i:05}\r\n").as_bytes());
    }
    out
}

/// A bulk reply of `len` bytes.
fn bulk_reply(len: usize) -> Vec<u8> {
    let mut out = format!("${len}\r\n").into_bytes();
    out.resize(out.len() + len, b'x');
    out.extend_from_slice(b"\r\n");
    out
}

/// Decodes every request in `buf`; returns how many there were.
fn decode_requests(buf: &mut BytesMut) -> usize {
    let mut decoder = RequestDecoder::default();
    let mut n = 0;
    while let Some(req) = decoder.decode(buf).expect("valid request") {
        black_box(&req);
        n += 1;
    }
    n
}

/// Feeds `input` into a read buffer `piece` bytes at a time, splitting
/// replies as they complete; returns how many there were.
fn split_replies(input: &[u8], piece: usize) -> usize {
    let mut decoder = ReplyDecoder::default();
    let mut buf = BytesMut::with_capacity(input.len());
    let mut n = 0;
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = decoder.decode(&mut buf).expect("valid reply") {
            black_box(&frame);
            n += 1;
        }
    }
    n
}

fn request_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_decode");
    let cases: [(&str, Vec<u8>, usize); 2] = [
        ("pipeline_100_small", small_pipeline(), 100),
        (
            "set_1mib_value",
            request(&[b"SET", b"big", &vec![b'v'; 1 << 20]]),
            1,
        ),
    ];
    for (name, input, count) in cases {
        let input = Bytes::from(input);
        assert_eq!(decode_requests(&mut BytesMut::from(&input[..])), count);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&input[..]),
                |mut buf| decode_requests(&mut buf),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn reply_split(c: &mut Criterion) {
    let mut group = c.benchmark_group("reply_split");
    // (name, reply, bytes fed per read). Every case copies the reply into the
    // read buffer as a socket read would, so the cases differ only in how
    // often the decoder runs on an incomplete frame.
    let big_array = array_reply(10_000);
    let cases: [(&str, Vec<u8>, usize); 5] = [
        ("array_100", array_reply(100), usize::MAX),
        ("bulk_1mib", bulk_reply(1 << 20), usize::MAX),
        ("array_10000_whole", big_array.clone(), usize::MAX),
        ("array_10000_in_64k_pieces", big_array, PIECE),
        // Ten times the elements in ten times the pieces: the same bytes/s
        // as above, not a tenth of it.
        ("array_100000_in_64k_pieces", array_reply(100_000), PIECE),
    ];
    for (name, input, piece) in cases {
        assert_eq!(split_replies(&input, piece), 1, "{name}");
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| b.iter(|| split_replies(&input, piece)));
    }
    group.finish();
}

fn classify_mix(c: &mut Criterion) {
    // Ordinary reads and writes dominate; the rest exercise every branch:
    // conditional SET, subcommands, dedicated, local, denied, unknown.
    let mix: Vec<Request> = [
        &["GET", "k"][..],
        &["SET", "k", "v"],
        &["get", "k"],
        &["set", "k", "v", "NX"],
        &["HGETALL", "h"],
        &["INCR", "n"],
        &["MGET", "a", "b", "c"],
        &["ZRANGEBYSCORE", "z", "0", "10"],
        &["EVALSHA", "abc", "0"],
        &["XREAD", "COUNT", "1", "STREAMS", "s", "0"],
        &["CLIENT", "SETINFO", "lib-name", "x"],
        &["MULTI"],
        &["SELECT", "0"],
        &["DEBUG", "SLEEP", "0"],
        &["PING"],
        &["NOSUCHCOMMAND", "x"],
    ]
    .iter()
    .map(|args| Request::from_args(args))
    .collect();

    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("mix_16", |b| {
        b.iter(|| {
            for req in &mix {
                black_box(classify(black_box(req).view(), 0));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, request_decode, reply_split, classify_mix);
criterion_main!(benches);
