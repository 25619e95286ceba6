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
        Val::Float(x) if x.is_finite() => {
            let _ = write!(out, "{x:?}");
        }
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
