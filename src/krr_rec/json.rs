//! A small JSON reader for QEMU's VM description (the JSON after a migration stream's EOF).
//! Bounded nesting; no allocation beyond the input's size.

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

const MAX_DEPTH: usize = 64;

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    /// A non-negative integer (QEMU writes sizes, versions and ids as integers).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Json::Num(n) if n >= 0.0 && n.fract() == 0.0 && n < 1.8e19 => Some(n as u64),
            _ => None,
        }
    }
    pub fn as_arr(&self) -> &[Json] {
        match self {
            Json::Arr(v) => v,
            _ => &[],
        }
    }

    /// Parse a whole document; `Err((byte offset, what))`.
    pub fn parse(s: &[u8]) -> Result<Json, (usize, String)> {
        let mut p = P { s, i: 0 };
        let v = p.value(0)?;
        p.ws();
        if p.i != s.len() {
            return Err((p.i, "trailing bytes after the JSON value".into()));
        }
        Ok(v)
    }
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn err<T>(&self, what: &str) -> Result<T, (usize, String)> {
        Err((self.i, what.to_string()))
    }
    fn lit(&mut self, word: &[u8], v: Json) -> Result<Json, (usize, String)> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("unknown literal")
        }
    }
    fn value(&mut self, depth: usize) -> Result<Json, (usize, String)> {
        if depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            return self.err("unexpected end");
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(v));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return self.err("expected ':'");
                    }
                    self.i += 1;
                    let val = self.value(depth + 1)?;
                    v.push((k, val));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(v));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            b'"' => Ok(Json::Str(self.string()?)),
            b't' => self.lit(b"true", Json::Bool(true)),
            b'f' => self.lit(b"false", Json::Bool(false)),
            b'n' => self.lit(b"null", Json::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                t.parse::<f64>()
                    .map(Json::Num)
                    .map_err(|_| (start, "bad number".to_string()))
            }
            _ => self.err("unexpected character"),
        }
    }
    fn string(&mut self) -> Result<String, (usize, String)> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let h = self
                                .s
                                .get(self.i..self.i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(h) = h else {
                                return self.err("bad \\u escape");
                            };
                            self.i += 4;
                            let ch = char::from_u32(h).unwrap_or('\u{fffd}');
                            let mut b = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| (self.i, "string is not UTF-8".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn parses_what_qemu_writes() {
        let j = Json::parse(
            br#"{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0,
            "fields": [{"name": "a\"b\u0041\\", "size": 8, "array_len": 3}], "x": [true, false, null, -1.5e3]}]}"#,
        )
        .unwrap();
        assert_eq!(j.get("page_size").and_then(Json::as_u64), Some(4096));
        let d = &j.get("devices").unwrap().as_arr()[0];
        assert_eq!(d.get("name").and_then(Json::as_str), Some("timer"));
        let f = &d.get("fields").unwrap().as_arr()[0];
        assert_eq!(f.get("name").and_then(Json::as_str), Some("a\"bA\\"));
        assert_eq!(f.get("array_len").and_then(Json::as_u64), Some(3));
        assert_eq!(
            d.get("x").unwrap().as_arr(),
            &[
                Json::Bool(true),
                Json::Bool(false),
                Json::Null,
                Json::Num(-1500.0)
            ]
        );
    }

    #[test]
    fn rejects_bad_documents_without_panicking() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,",
            b"{\"a\" 1}",
            b"\"\\u12",
            b"tru",
            b"-",
            b"{} x",
            b"\"\xff\"",
        ] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(1000);
        assert!(Json::parse(deep.as_bytes()).is_err());
        assert_eq!(Json::Num(1.5).as_u64(), None);
        assert_eq!(Json::Num(-1.0).as_u64(), None);
    }
}
