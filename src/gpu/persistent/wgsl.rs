//! WGSL source as tokens and top-level declarations, for the persistent module
//! (`persistent.rs`): enough of the language to rename what a module declares,
//! move its bindings and turn its entry points into functions, keeping every
//! other character as written. Not a parser of expressions: naga validates what
//! comes out.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
    Ident,
    Number,
    Punct,
    /// whitespace and comments
    Trivia,
}

/// Split WGSL source into tokens (byte ranges), comments and whitespace kept as
/// trivia, so that joining every token's text gives the source back.
pub(super) fn tokenize(src: &str) -> Vec<(Tok, usize, usize)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let kind = if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Tok::Trivia
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Tok::Trivia
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            // (block comments nest in WGSL)
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            Tok::Trivia
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Tok::Ident
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            Tok::Number
        } else {
            // (UTF-8 outside comments does not occur in WGSL code)
            i += src[i..].chars().next().map_or(1, char::len_utf8);
            Tok::Punct
        };
        out.push((kind, start, i));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeclKind {
    /// `enable`, `requires`, `diagnostic`: module directives
    Directive,
    Fn,
    Struct,
    Const,
    Override,
    Alias,
    /// `var<storage…>`, `var<uniform>`
    Binding,
    Workgroup,
    Private,
    ConstAssert,
}

/// A top-level declaration: tokens [start, end) of the module (its leading trivia
/// included), what it declares.
#[derive(Debug, Clone)]
pub(super) struct Decl {
    pub(super) kind: DeclKind,
    pub(super) name: String,
    pub(super) start: usize,
    pub(super) end: usize,
    /// whether it carries `@compute` (an entry point)
    pub(super) entry: bool,
}

/// A parsed module: its source, tokens and top-level declarations.
pub(super) struct Parsed<'a> {
    pub(super) src: &'a str,
    pub(super) toks: Vec<(Tok, usize, usize)>,
    pub(super) decls: Vec<Decl>,
}

impl<'a> Parsed<'a> {
    pub(super) fn text(&self, t: usize) -> &'a str {
        &self.src[self.toks[t].1..self.toks[t].2]
    }

    /// The next non-trivia token at or after `t`.
    pub(super) fn next(&self, mut t: usize) -> Option<usize> {
        while t < self.toks.len() && self.toks[t].0 == Tok::Trivia {
            t += 1;
        }
        (t < self.toks.len()).then_some(t)
    }

    /// The non-trivia token before `t`.
    pub(super) fn prev(&self, t: usize) -> Option<usize> {
        (0..t).rev().find(|&u| self.toks[u].0 != Tok::Trivia)
    }

    pub(super) fn parse(src: &'a str) -> Result<Parsed<'a>> {
        let toks = tokenize(src);
        let mut p = Parsed {
            src,
            toks,
            decls: Vec::new(),
        };
        let mut t = 0;
        while let Some(first) = p.next(t) {
            let decl = p.decl(t, first)?;
            t = decl.end;
            p.decls.push(decl);
        }
        Ok(p)
    }

    /// The declaration whose first token is `first` (its leading trivia from `from`).
    fn decl(&self, from: usize, first: usize) -> Result<Decl> {
        let mut t = first;
        let mut entry = false;
        // attributes: @name or @name(…)
        while self.text(t) == "@" {
            let name = self.next(t + 1).context("an attribute without a name")?;
            entry |= self.text(name) == "compute";
            t = self
                .next(name + 1)
                .context("a declaration ends after an attribute")?;
            if self.text(t) == "(" {
                t = self.close(t)?;
                t = self
                    .next(t + 1)
                    .context("a declaration ends after an attribute")?;
            }
        }
        let keyword = self.text(t);
        let kind = match keyword {
            "enable" | "requires" | "diagnostic" => DeclKind::Directive,
            "fn" => DeclKind::Fn,
            "struct" => DeclKind::Struct,
            "const" => DeclKind::Const,
            "override" => DeclKind::Override,
            "alias" => DeclKind::Alias,
            "const_assert" => DeclKind::ConstAssert,
            "var" => {
                let open = self.next(t + 1).context("var without a name")?;
                if self.text(open) == "<" {
                    let space = self.next(open + 1).context("var<")?;
                    match self.text(space) {
                        "workgroup" => DeclKind::Workgroup,
                        "private" => DeclKind::Private,
                        _ => DeclKind::Binding,
                    }
                } else {
                    DeclKind::Private
                }
            }
            other => bail!("unexpected `{other}` at the top level of a module"),
        };
        // the declared name: the identifier after the keyword (after var's <…>)
        let mut n = self.next(t + 1).context("a declaration without a name")?;
        if kind != DeclKind::Directive && kind != DeclKind::ConstAssert && self.text(n) == "<" {
            while self.text(n) != ">" {
                n = self.next(n + 1).context("unclosed var<")?;
            }
            n = self.next(n + 1).context("var<…> without a name")?;
        }
        let name = match kind {
            DeclKind::Directive | DeclKind::ConstAssert => String::new(),
            _ => self.text(n).to_string(),
        };
        // the end: `;` at depth 0, or the body's closing brace for fn and struct
        let mut u = n;
        let end = loop {
            let s = self.text(u);
            if s == ";" {
                break u + 1;
            }
            if s == "{" && matches!(kind, DeclKind::Fn | DeclKind::Struct) {
                let close = self.close(u)?;
                // (a `;` right after a struct's brace belongs to it)
                break match self.next(close + 1) {
                    Some(semi) if self.text(semi) == ";" => semi + 1,
                    _ => close + 1,
                };
            }
            if matches!(s, "(" | "[" | "{") {
                u = self.close(u)?;
            }
            u = self.next(u + 1).context("a declaration without its end")?;
        };
        Ok(Decl {
            kind,
            name,
            start: from,
            end,
            entry,
        })
    }

    /// The token that closes the bracket opened at `t`.
    pub(super) fn close(&self, t: usize) -> Result<usize> {
        let mut depth = 0i32;
        for u in t..self.toks.len() {
            if self.toks[u].0 != Tok::Punct {
                continue;
            }
            match self.text(u) {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(u);
                    }
                }
                _ => {}
            }
        }
        bail!("an unclosed bracket")
    }

    /// Whether identifier token `t` names a top-level declaration where it stands:
    /// not a member (after `.`, or a struct member's declared name), not an
    /// attribute's name or argument.
    pub(super) fn is_reference(&self, t: usize, decl: &Decl) -> bool {
        if self.toks[t].0 != Tok::Ident {
            return false;
        }
        match self.prev(t).map(|p| self.text(p)) {
            Some(".") | Some("@") => return false,
            _ => {}
        }
        if decl.kind == DeclKind::Struct
            && self.next(t + 1).map(|n| self.text(n)) == Some(":")
            && self.depth_in(decl, t) == 1
        {
            return false;
        }
        // inside an attribute's parentheses: @name(…)
        let mut depth = 0i32;
        let mut u = t;
        while u > decl.start {
            u -= 1;
            if self.toks[u].0 != Tok::Punct {
                continue;
            }
            match self.text(u) {
                ")" | "]" | "}" => depth += 1,
                "(" | "[" | "{" => {
                    if depth == 0 {
                        if self.text(u) != "(" {
                            return true;
                        }
                        let name = self.prev(u);
                        let at = name.and_then(|n| self.prev(n));
                        return at.is_none_or(|a| self.text(a) != "@");
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
        true
    }

    /// Brace depth of token `t` inside `decl`.
    fn depth_in(&self, decl: &Decl, t: usize) -> i32 {
        let mut depth = 0;
        for u in decl.start..t {
            if self.toks[u].0 == Tok::Punct {
                match self.text(u) {
                    "{" => depth += 1,
                    "}" => depth -= 1,
                    _ => {}
                }
            }
        }
        depth
    }

    /// A binding declaration's (group, binding).
    pub(super) fn binding_attr(&self, d: &Decl) -> Result<(u32, u32)> {
        let mut found = (None, None);
        for t in d.start..d.end {
            if self.text(t) != "@" {
                continue;
            }
            let Some(name) = self.next(t + 1) else { break };
            let slot = match self.text(name) {
                "group" => &mut found.0,
                "binding" => &mut found.1,
                _ => continue,
            };
            let v = self
                .next(name + 1)
                .and_then(|open| self.next(open + 1))
                .map(|v| self.text(v).trim_end_matches('u'));
            *slot = v.and_then(|v| v.parse::<u32>().ok());
        }
        match found {
            (Some(g), Some(b)) => Ok((g, b)),
            _ => bail!("`{}` has no literal @group and @binding", d.name),
        }
    }

    /// A variable declaration's type, as text (tokens after its name's `:`).
    pub(super) fn type_text(&self, d: &Decl) -> String {
        let toks: Vec<usize> = (d.start..d.end)
            .filter(|&t| self.toks[t].0 != Tok::Trivia)
            .collect();
        let colon = toks
            .iter()
            .position(|&t| self.text(t) == ":")
            .unwrap_or(toks.len());
        toks[(colon + 1).min(toks.len())..]
            .iter()
            .map(|&t| self.text(t))
            .filter(|s| *s != ";")
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The declaration's tokens without trivia, joined by spaces (to compare).
    pub(super) fn normal(&self, d: &Decl) -> String {
        (d.start..d.end)
            .filter(|&t| self.toks[t].0 != Tok::Trivia)
            .map(|t| self.text(t))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The top-level names a declaration refers to.
    pub(super) fn references(&self, d: &Decl, names: &BTreeSet<String>) -> BTreeSet<String> {
        (d.start..d.end)
            .filter(|&t| self.is_reference(t, d) && names.contains(self.text(t)))
            .map(|t| self.text(t).to_string())
            .filter(|n| *n != d.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_give_the_source_back() {
        let src = "// a\n@group(0) @binding(3) var<storage, read> a: array<f32>; /* b /* c */ d */ fn f() -> f32 { return a[0] * 1.5e3; }\n";
        let toks = tokenize(src);
        let joined: String = toks.iter().map(|&(_, s, e)| &src[s..e]).collect();
        assert_eq!(joined, src);
        let idents: Vec<&str> = toks
            .iter()
            .filter(|t| t.0 == Tok::Ident)
            .map(|&(_, s, e)| &src[s..e])
            .collect();
        assert_eq!(
            idents,
            [
                "group", "binding", "var", "storage", "read", "a", "array", "f32", "fn", "f",
                "f32", "return", "a"
            ]
        );
    }

    #[test]
    fn declarations_and_references() {
        let src = "enable f16;\nstruct S { a: u32, b: T }\nconst N: u32 = 4u;\n@group(0) @binding(1) var<storage, read> x: array<f32>;\nvar<workgroup> w: array<f32, N>;\n@compute @workgroup_size(16, 16)\nfn main(@builtin(workgroup_id) wg: vec3<u32>) { let s = S(1u, 2u); w[s.a] = x[N]; }\n";
        let p = Parsed::parse(src).unwrap();
        let kinds: Vec<(DeclKind, &str, bool)> = p
            .decls
            .iter()
            .map(|d| (d.kind, d.name.as_str(), d.entry))
            .collect();
        assert_eq!(
            kinds,
            [
                (DeclKind::Directive, "", false),
                (DeclKind::Struct, "S", false),
                (DeclKind::Const, "N", false),
                (DeclKind::Binding, "x", false),
                (DeclKind::Workgroup, "w", false),
                (DeclKind::Fn, "main", true),
            ]
        );
        let names: BTreeSet<String> = ["S", "N", "x", "w", "main", "a", "T"]
            .map(String::from)
            .into();
        // a member named like a declaration is not a reference to it
        let refs = p.references(&p.decls[1], &names);
        assert_eq!(refs, BTreeSet::from(["T".to_string()]));
        let refs = p.references(&p.decls[5], &names);
        let want: BTreeSet<String> = ["S", "N", "x", "w"].map(String::from).into();
        assert_eq!(refs, want);
    }
}
