//! A jq value written out as compact JSON, byte for byte as jaq's `Display` writes it, without going through
//! `fmt::Formatter` for every string, key and punctuation mark: the workers write every output event this way.

use jaq_json::Val;
use std::io::Write as _;

/// Appends `v` as compact JSON.
pub fn write_val(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        // As jaq writes floats: Rust's shortest round-trip form; NaN and infinities as null.
        Val::Float(x) if x.is_finite() => write_float(out, *x),
        Val::Float(_) => out.extend_from_slice(b"null"),
        Val::Num(n) => out.extend_from_slice(n.as_bytes()),
        Val::Str(s) => write_str(out, s),
        Val::Arr(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_val(out, x);
            }
            out.push(b']');
        }
        Val::Obj(o) => {
            out.push(b'{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_val(out, x);
            }
            out.push(b'}');
        }
    }
}

/// A finite float in Rust's shortest round-trip form (`{x:?}`), which is what jaq writes. ryu finds the same shortest
/// digits several times faster, and lays them out the same way between 1e-4 and 1e16, where Debug switches to an
/// exponent at other bounds. The two part only where two shortest forms are equally near: ryu then takes the even
/// one, Debug the upper one.
fn write_float(out: &mut Vec<u8>, x: f64) {
    if (1e-4..1e16).contains(&x.abs()) && !may_tie(x) {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    } else {
        let _ = write!(out, "{x:?}");
    }
}

/// Whether two shortest forms of `x` can be equally near it. They are two neighbours on a grid of n digits that
/// both read back as `x`, with `x` halfway between them: so `x`'s exact decimal form has n + 1 digits and ends in 5,
/// and n is 16 or 17, since coarser grids do not read back. A float with a long exact form, as most computed ones
/// have, cannot tie.
fn may_tie(x: f64) -> bool {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let mut mantissa = bits & ((1 << 52) - 1);
    let mut exponent = if biased == 0 { -1074 } else { biased - 1075 };
    if biased != 0 {
        mantissa |= 1 << 52;
    }
    if mantissa == 0 {
        return false;
    }
    let zeros = mantissa.trailing_zeros();
    mantissa >>= zeros;
    exponent += zeros as i32;
    if exponent >= 0 {
        // An integer, below 1e16 here: its exact form has at most 16 digits, and halfway needs an odd fraction.
        return false;
    }
    // x = mantissa / 2^k = mantissa * 5^k / 10^k: its exact digits are those of mantissa * 5^k.
    let k = exponent.unsigned_abs();
    if k > 26 {
        // 5^27 alone has 19 digits.
        return false;
    }
    let digits = u128::from(mantissa) * 5u128.pow(k);
    (10u128.pow(16)..10u128.pow(18)).contains(&digits)
}

/// A JSON string, escaped as jaq escapes it: `\t`, `\n`, `\r`, `\\` and `\"` by name, other control characters as
/// `\u00xx`, everything else as it is.
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[from..i]);
                let _ = write!(out, "\\u{b:04x}");
                from = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(escaped);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_debug_writes_them_at_every_magnitude() {
        let mut edges = vec![
            1e-4,
            1e16,
            1.0 + 2f64.powi(-17),
            f64::from_bits(0x42b8_66ca_ca40_ad50),
            0.0,
            -0.0,
            1.0,
            0.1,
            1.5,
            2.0_f64.sqrt(),
            9007199254740993.0,
            f64::MIN_POSITIVE,
        ];
        edges.extend([1e-4_f64, 1e16].map(|b| f64::from_bits(b.to_bits() - 1)));
        // A cheap generator: every exponent, with scrambled mantissas.
        let mut bits = 0x9e37_79b9_7f4a_7c15_u64;
        let random = (0..400_000).map(|_| {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            f64::from_bits(bits)
        });
        // Floats with short exact forms, where ties are.
        let dyadic =
            (1..60).flat_map(|j| (1..3000u64).map(move |i| (i * 0x9e37_79b9 % (1 << 53)) as f64 / 2f64.powi(j)));
        let round = (1..200_000)
            .map(|i| i as f64 / 1000.0 + 1e13 * (i % 7) as f64)
            .chain(dyadic)
            .chain((0..40).map(|e| 10f64.powi(e - 20) * 3.0));
        for x in edges.into_iter().chain(random).chain(round).filter(|x| x.is_finite()) {
            for x in [x, -x] {
                let mut ours = Vec::new();
                write_float(&mut ours, x);
                assert_eq!(String::from_utf8(ours).unwrap(), format!("{x:?}"), "{:#x}", x.to_bits());
            }
        }
    }

    #[test]
    fn values_are_written_as_jaq_writes_them() {
        let json = serde_json::json!({
            "s": "tab\there \"quoted\" back\\slash\nnew\u{1}\u{7f} é 😀",
            "n": [0, -1, 9_223_372_036_854_775_807i64, 1.5, 0.1, 1e-7, 1e300, 123456789012345680000.0, -0.0],
            "big": 18_446_744_073_709_551_615u64,
            "t": true, "f": false, "z": null, "o": {}, "a": [], "nested": {"k": [{"x": "y"}]}
        });
        let v = Val::from(json);
        let mut ours = Vec::new();
        write_val(&mut ours, &v);
        assert_eq!(String::from_utf8(ours).unwrap(), v.to_string());
        for odd in [Val::Float(f64::NAN), Val::Float(f64::INFINITY), Val::Num(std::rc::Rc::new("1.000".into()))] {
            let mut ours = Vec::new();
            write_val(&mut ours, &odd);
            assert_eq!(String::from_utf8(ours).unwrap(), odd.to_string());
        }
    }
}
