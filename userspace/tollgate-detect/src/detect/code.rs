//! Code injection: server-side code, expressions and serialized objects that an
//! application would evaluate or instantiate. PHP (open tags, superglobals, stream
//! wrappers, dangerous and obfuscated calls, serialized objects), Java (runtime and
//! reflection classes, deserialization gadgets and stream magic), expression
//! languages (OGNL, SpEL, EL), template injection (Jinja/Twig, ERB/JSP, Perl,
//! FreeMarker, Thymeleaf), Node.js (`constructor.constructor`, `child_process`,
//! node-serialize), prototype pollution and XML external entities.
//!
//! One Aho-Corasick scan over the lowercased input finds candidate anchors; each
//! anchor is then verified around its position. Code discussed in prose (a question
//! in a Q&A API) scores lower than the same code alone in a parameter: a payload has
//! to parse, a sentence around it rarely does.

use aho_corasick::AhoCorasick;

use super::rules;
use super::{Category, Location, STRONG, Sink, is_word};

/// What an anchor means; verified by [`Code::check`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trig {
    /// `<?php`, `<?=`, `<? ` and a non-declaration `<?xml`.
    PhpTag,
    /// `[php]`, `{php}`: template tags that run PHP (Smarty, BBCode plugins).
    PhpBlock,
    /// `$_GET`, `$_POST`, `$GLOBALS`...
    Superglobal,
    /// `php://`, `phar://`, `expect://`...
    PhpWrapper,
    /// A function only PHP has (`base64_decode`, `posix_...`), when called.
    PhpFunc,
    /// A prefix of a PHP function family (`posix_`, `ldap_`), when called.
    PhpFuncPrefix,
    /// `system`, `exec`, `eval`...: names other languages share; need evidence.
    GenericFunc,
    /// `O:8:"stdClass":1:{`.
    PhpSerialized,
    /// PHP ini directives that load or run code (`auto_prepend_file`).
    PhpIni,
    /// Java classes that run commands, load classes or are gadget-chain links.
    JavaExec,
    /// Java I/O, network and system classes: dangerous as a bare type name.
    JavaClass,
    /// `rO0AB`, `KztAAU`, `s7QAF`: base64 of the Java serialization magic (case-sensitive).
    JavaSerialB64,
    /// `aced0005`: hex of the Java serialization magic.
    JavaSerialHex,
    /// OGNL markers (`%{`, `#_memberAccess`, `@java.lang.`).
    Ognl,
    /// SpEL type reference `T(java.`.
    Spel,
    /// `${` / `#{`: EL / SpEL / template expression, verified by content.
    ElOpen,
    /// `{{`: Jinja / Twig / Handlebars / Angular expression.
    Mustache,
    /// `<%`: ERB / JSP / ASP block.
    ErbOpen,
    /// Python object-model attributes used to escape template sandboxes.
    Dunder,
    /// `@{[`: Perl interpolation of an expression.
    Perl,
    /// FreeMarker / Velocity / Thymeleaf constructs that instantiate classes.
    TemplateExec,
    /// Node.js: `child_process`, `process.mainModule`, `constructor.constructor`.
    Node,
    /// node-serialize function marker `_$$ND_FUNC$$_` (and its base64, case-sensitive).
    NodeSerial,
    /// `__proto__`, `constructor.prototype`, `constructor[prototype]`.
    Proto,
    /// `while(`: constant-condition loops sent to `eval`.
    JsLoop,
    /// `<!entity`, `<!doctype`.
    Xml,
}

const PATTERNS: &[(&str, Trig)] = &[
    ("<?php", Trig::PhpTag),
    ("<?=", Trig::PhpTag),
    ("<? ", Trig::PhpTag),
    ("<?\t", Trig::PhpTag),
    ("<?\n", Trig::PhpTag),
    ("<?\r", Trig::PhpTag),
    ("<?xml", Trig::PhpTag),
    ("[php]", Trig::PhpBlock),
    ("{php}", Trig::PhpBlock),
    ("[/php]", Trig::PhpBlock),
    ("{/php}", Trig::PhpBlock),
    ("$_get", Trig::Superglobal),
    ("$_post", Trig::Superglobal),
    ("$_request", Trig::Superglobal),
    ("$_server", Trig::Superglobal),
    ("$_cookie", Trig::Superglobal),
    ("$_files", Trig::Superglobal),
    ("$_env", Trig::Superglobal),
    ("$_session", Trig::Superglobal),
    ("$globals", Trig::Superglobal),
    ("$http_raw_post_data", Trig::Superglobal),
    ("php://", Trig::PhpWrapper),
    ("phar://", Trig::PhpWrapper),
    ("expect://", Trig::PhpWrapper),
    ("zip://", Trig::PhpWrapper),
    ("compress.zlib://", Trig::PhpWrapper),
    ("compress.bzip2://", Trig::PhpWrapper),
    ("glob://", Trig::PhpWrapper),
    ("data://", Trig::PhpWrapper),
    ("rar://", Trig::PhpWrapper),
    ("ogg://", Trig::PhpWrapper),
    ("base64_decode", Trig::PhpFunc),
    ("str_rot13", Trig::PhpFunc),
    ("gzinflate", Trig::PhpFunc),
    ("gzuncompress", Trig::PhpFunc),
    ("gzdecode", Trig::PhpFunc),
    ("bzdecompress", Trig::PhpFunc),
    ("file_get_contents", Trig::PhpFunc),
    ("file_put_contents", Trig::PhpFunc),
    ("file_exists", Trig::PhpFunc),
    ("readfile", Trig::PhpFunc),
    ("highlight_file", Trig::PhpFunc),
    ("show_source", Trig::PhpFunc),
    ("move_uploaded_file", Trig::PhpFunc),
    ("unserialize", Trig::PhpFunc),
    ("call_user_func", Trig::PhpFunc),
    ("call_user_func_array", Trig::PhpFunc),
    ("create_function", Trig::PhpFunc),
    ("preg_replace", Trig::PhpFunc),
    ("shell_exec", Trig::PhpFunc),
    ("passthru", Trig::PhpFunc),
    ("proc_open", Trig::PhpFunc),
    ("pcntl_exec", Trig::PhpFunc),
    ("phpinfo", Trig::PhpFunc),
    ("php_uname", Trig::PhpFunc),
    ("ini_set", Trig::PhpFunc),
    ("intval", Trig::PhpFunc),
    ("fsockopen", Trig::PhpFunc),
    ("curl_exec", Trig::PhpFunc),
    ("assert_options", Trig::PhpFunc),
    ("posix_", Trig::PhpFuncPrefix),
    ("ldap_", Trig::PhpFuncPrefix),
    ("array_", Trig::PhpFuncPrefix),
    ("pg_", Trig::PhpFuncPrefix),
    ("sodium_crypto_", Trig::PhpFuncPrefix),
    ("mysqli_", Trig::PhpFuncPrefix),
    ("system", Trig::GenericFunc),
    ("exec", Trig::GenericFunc),
    ("eval", Trig::GenericFunc),
    ("assert", Trig::GenericFunc),
    ("popen", Trig::GenericFunc),
    ("o:1", Trig::PhpSerialized),
    ("o:2", Trig::PhpSerialized),
    ("o:3", Trig::PhpSerialized),
    ("o:4", Trig::PhpSerialized),
    ("o:5", Trig::PhpSerialized),
    ("o:6", Trig::PhpSerialized),
    ("o:7", Trig::PhpSerialized),
    ("o:8", Trig::PhpSerialized),
    ("o:9", Trig::PhpSerialized),
    ("auto_prepend_file", Trig::PhpIni),
    ("auto_append_file", Trig::PhpIni),
    ("allow_url_include", Trig::PhpIni),
    ("disable_functions", Trig::PhpIni),
    ("open_basedir", Trig::PhpIni),
    ("php_value", Trig::PhpIni),
    ("php_admin_value", Trig::PhpIni),
    ("session.auto_start", Trig::PhpIni),
    ("opcache.", Trig::PhpIni),
    ("mbstring.", Trig::PhpIni),
    ("extension_dir", Trig::PhpIni),
    ("java.lang.runtime", Trig::JavaExec),
    ("java.runtime", Trig::JavaExec),
    ("processbuilder", Trig::JavaExec),
    ("getruntime", Trig::JavaExec),
    ("java.lang.reflect", Trig::JavaExec),
    ("java.lang.classloader", Trig::JavaExec),
    ("urlclassloader", Trig::JavaExec),
    ("class.forname", Trig::JavaExec),
    (".forname(", Trig::JavaExec),
    ("scriptenginemanager", Trig::JavaExec),
    ("java.beans.xmldecoder", Trig::JavaExec),
    ("xmldecoder", Trig::JavaExec),
    ("com.sun.org.apache", Trig::JavaExec),
    ("com.opensymphony.xwork2", Trig::JavaExec),
    ("org.apache.commons.collections", Trig::JavaExec),
    ("org.codehaus.groovy.runtime", Trig::JavaExec),
    ("jdbcrowsetimpl", Trig::JavaExec),
    ("templatesimpl", Trig::JavaExec),
    ("invokertransformer", Trig::JavaExec),
    ("instantiatetransformer", Trig::JavaExec),
    ("chainedtransformer", Trig::JavaExec),
    ("constanttransformer", Trig::JavaExec),
    ("clonetransformer", Trig::JavaExec),
    ("instantiatefactory", Trig::JavaExec),
    ("prototypeclonefactory", Trig::JavaExec),
    ("prototypeserializationfactory", Trig::JavaExec),
    ("forclosure", Trig::JavaExec),
    ("whileclosure", Trig::JavaExec),
    ("bsh.interpreter", Trig::JavaExec),
    ("freemarker.template.utility.execute", Trig::TemplateExec),
    (
        "freemarker.template.utility.objectconstructor",
        Trig::TemplateExec,
    ),
    ("?new(", Trig::TemplateExec),
    ("__${", Trig::TemplateExec),
    ("#set(", Trig::TemplateExec),
    ("java.io.", Trig::JavaClass),
    ("java.net.", Trig::JavaClass),
    ("java.nio.", Trig::JavaClass),
    ("java.lang.system", Trig::JavaClass),
    ("java.lang.thread", Trig::JavaClass),
    ("java.lang.class", Trig::JavaClass),
    ("java.util.scanner", Trig::JavaClass),
    ("javax.script", Trig::JavaClass),
    ("javax.naming", Trig::JavaClass),
    ("javax.management", Trig::JavaClass),
    ("sun.misc.", Trig::JavaClass),
    ("ro0ab", Trig::JavaSerialB64),
    ("kztaau", Trig::JavaSerialB64),
    ("s7qaf", Trig::JavaSerialB64),
    ("aced0005", Trig::JavaSerialHex),
    ("%{", Trig::Ognl),
    ("#_memberaccess", Trig::Ognl),
    ("@ognl", Trig::Ognl),
    ("ognlcontext", Trig::Ognl),
    ("@java.lang.", Trig::Ognl),
    ("t(java.", Trig::Spel),
    ("t (java.", Trig::Spel),
    ("${", Trig::ElOpen),
    ("#{", Trig::ElOpen),
    ("{{", Trig::Mustache),
    ("<%", Trig::ErbOpen),
    ("__class__", Trig::Dunder),
    ("__globals__", Trig::Dunder),
    ("__builtins__", Trig::Dunder),
    ("__subclasses__", Trig::Dunder),
    ("__mro__", Trig::Dunder),
    ("__import__", Trig::Dunder),
    ("__bases__", Trig::Dunder),
    ("__base__", Trig::Dunder),
    ("@{[", Trig::Perl),
    ("child_process", Trig::Node),
    ("process.mainmodule", Trig::Node),
    ("process.binding(", Trig::Node),
    ("constructor.constructor", Trig::Node),
    ("_$$nd_func$$_", Trig::NodeSerial),
    ("xyqktkrfrlvoqyqkx", Trig::NodeSerial),
    ("__proto__", Trig::Proto),
    ("constructor.prototype", Trig::Proto),
    ("constructor[prototype]", Trig::Proto),
    ("constructor][prototype]", Trig::Proto),
    ("while(", Trig::JsLoop),
    ("while (", Trig::JsLoop),
    ("<!entity", Trig::Xml),
    ("<!doctype", Trig::Xml),
];

/// Most anchors verified per input (bounds work on crafted inputs).
const MAX_ANCHORS: usize = 64;

pub(crate) struct Code {
    /// Every anchor.
    ac: AhoCorasick,
    /// Anchors that can occur in a plain input (letters, digits, ` _,.`), which
    /// is most inputs: class names, gadget names, serialization magic, dunders.
    plain: AhoCorasick,
    /// Pattern index in `plain` to index in [`PATTERNS`].
    plain_ids: Vec<usize>,
}

/// Per-input facts computed at most once, only when an anchor needs them.
struct Ctx<'a> {
    lower: &'a str,
    is_value: bool,
    text: &'a str,
    prose: Option<bool>,
}

impl Ctx<'_> {
    /// Natural-language text around the match: five words in a row.
    fn prose(&mut self) -> bool {
        *self.prose.get_or_insert_with(|| is_prose(self.lower))
    }

    /// Full score alone, a fifth inside prose (below the alert threshold): a
    /// question may mention several of these without adding up to a ban.
    fn discounted(&mut self, score: u32) -> u32 {
        if self.prose() { score / 5 } else { score }
    }
}

impl Code {
    pub(crate) fn new() -> Code {
        let pats: Vec<&str> = PATTERNS.iter().map(|(p, _)| *p).collect();
        let plain_ids: Vec<usize> = (0..PATTERNS.len())
            .filter(|i| PATTERNS[*i].0.bytes().all(is_plain))
            .collect();
        let plain_pats: Vec<&str> = plain_ids.iter().map(|i| PATTERNS[*i].0).collect();
        Code {
            ac: dfa(&pats),
            plain: dfa(&plain_pats),
            plain_ids,
        }
    }

    /// `lower` is `text` ASCII-lowercased (same byte offsets).
    pub(crate) fn check(
        &self,
        lower: &str,
        text: &str,
        is_value: bool,
        loc: &Location,
        sink: &mut Sink<'_>,
    ) {
        let mut ctx = Ctx {
            lower,
            is_value,
            text,
            prose: None,
        };
        let mut dunders = 0u32;
        let mut first_dunder = 0;
        let plain = lower.bytes().all(is_plain);
        let ac = if plain { &self.plain } else { &self.ac };
        for m in ac.find_iter(lower).take(MAX_ANCHORS) {
            let id = m.pattern().as_usize();
            let id = if plain { self.plain_ids[id] } else { id };
            let (pat, trig) = PATTERNS[id];
            let (s, e) = (m.start(), m.end());
            let Some((rule, score)) = self.verify(trig, pat, s, e, &mut ctx) else {
                if trig == Trig::Dunder {
                    dunders += 1;
                    first_dunder = if dunders == 1 { s } else { first_dunder };
                }
                continue;
            };
            if score > 0 {
                sink.push(rule, Category::Code, score, loc, text, s);
            }
        }
        // `__class__.__mro__`, `__init__.__globals__`: chains of object-model
        // attributes walk from any object to `os` or `subprocess`; one alone is
        // ordinary Python talk.
        if dunders >= 2 {
            let sc = ctx.discounted(STRONG);
            sink.push(
                rules::CODE_TEMPLATE,
                Category::Code,
                sc,
                loc,
                text,
                first_dunder,
            );
        } else if dunders == 1 {
            sink.push(
                rules::CODE_TEMPLATE,
                Category::Code,
                2,
                loc,
                text,
                first_dunder,
            );
        }
    }

    #[allow(clippy::too_many_lines)]
    fn verify(
        &self,
        trig: Trig,
        pat: &str,
        s: usize,
        e: usize,
        ctx: &mut Ctx<'_>,
    ) -> Option<(&'static str, u32)> {
        let l = ctx.lower;
        let b = l.as_bytes();
        let after = &l[e..];
        let prev = s.checked_sub(1).map(|i| b[i]);
        match trig {
            Trig::PhpTag => {
                if pat == "<?xml" {
                    // An XML declaration names its pseudo-attributes; anything else
                    // after `<?xml` is PHP's short tag followed by code.
                    let rest = after.trim_start();
                    if !after.starts_with([' ', '\t', '\n', '\r'])
                        || rest.is_empty()
                        || rest.starts_with("version")
                        || rest.starts_with("encoding")
                        || rest.starts_with("standalone")
                        || rest.starts_with("?>")
                    {
                        return None;
                    }
                    return Some((rules::CODE_PHP, ctx.discounted(8)));
                }
                let rest = after.trim_start();
                let code = rest.bytes().next().is_some_and(|c| {
                    c.is_ascii_alphabetic() || matches!(c, b'$' | b'@' | b'"' | b'\'' | b'(')
                });
                if pat == "<?php" || code {
                    Some((rules::CODE_PHP, ctx.discounted(STRONG)))
                } else {
                    None
                }
            }
            Trig::PhpBlock => Some((rules::CODE_PHP, ctx.discounted(STRONG))),
            Trig::Superglobal => {
                if after.bytes().next().is_some_and(is_word) {
                    return None;
                }
                Some((rules::CODE_PHP, ctx.discounted(STRONG)))
            }
            Trig::PhpWrapper => {
                if prev.is_some_and(|c| c.is_ascii_alphanumeric()) {
                    return None;
                }
                Some((rules::CODE_PHP, ctx.discounted(STRONG)))
            }
            Trig::PhpFunc | Trig::PhpFuncPrefix | Trig::GenericFunc => {
                if prev.is_some_and(|c| is_word(c) || matches!(c, b'.' | b'>' | b'$' | b':' | b'-'))
                {
                    return None;
                }
                let mut end = e;
                if trig == Trig::PhpFuncPrefix {
                    let n = after.bytes().take_while(|c| is_word(*c)).count();
                    if n == 0 {
                        return None;
                    }
                    end += n;
                } else if b.get(end).copied().is_some_and(is_word) {
                    return None;
                }
                let (call, obfuscated) = call_follows(&l[end..])?;
                if trig != Trig::GenericFunc {
                    return Some((rules::CODE_PHP, ctx.discounted(STRONG)));
                }
                // `(system)(ls)`, `"system"(ls)`, `exec /**/ (`: PHP callables
                // written to dodge signatures.
                let wrapped = matches!(prev, Some(b'(' | b'[' | b'"' | b'\''))
                    && l[e..end + call]
                        .trim_start()
                        .starts_with([')', ']', '"', '\'']);
                let arg = l[end + call..].trim_start().bytes().next();
                let php_arg = matches!(arg, Some(b'$' | b'\'' | b'"' | b'`'));
                if wrapped || obfuscated || php_arg {
                    Some((rules::CODE_PHP, ctx.discounted(STRONG)))
                } else {
                    Some((rules::CODE_PHP, 3))
                }
            }
            Trig::PhpSerialized => {
                if prev.is_some_and(|c| c.is_ascii_alphanumeric()) {
                    return None;
                }
                // O:<len>:"<class>":<count>:{
                let rest = &l[s + 2..];
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let rest = rest[digits..].strip_prefix(":\"")?;
                let q = rest.find('"')?;
                let name = &rest[..q];
                if name.is_empty() || !name.bytes().all(|c| is_word(c) || c == b'\\') {
                    return None;
                }
                let rest = rest[q + 1..].strip_prefix(':')?;
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                if digits == 0 || !rest[digits..].starts_with(":{") {
                    return None;
                }
                Some((rules::CODE_DESERIALIZATION, STRONG))
            }
            Trig::PhpIni => {
                if prev.is_some_and(|c| is_word(c) || c == b'.') {
                    return None;
                }
                // A directive set to a value (`auto_prepend_file=`, `php_value x`).
                let n = after
                    .bytes()
                    .take_while(|c| is_word(*c) || *c == b'.')
                    .count();
                let rest = after[n..].trim_start_matches([' ', '\t']);
                let set = rest.starts_with('=')
                    || (pat.starts_with("php_") && n == 0 && !rest.is_empty());
                if !set {
                    return None;
                }
                let strong = !matches!(pat, "opcache." | "mbstring.");
                Some((
                    rules::CODE_PHP,
                    if strong { ctx.discounted(STRONG) } else { 5 },
                ))
            }
            Trig::JavaExec => {
                if pat == "java.runtime" && after.starts_with('.') {
                    // `java.runtime.version`: a system property name.
                    return None;
                }
                Some((rules::CODE_JAVA, self.class_score(s, e, ctx, STRONG)))
            }
            Trig::JavaClass => Some((rules::CODE_JAVA, self.class_score(s, e, ctx, 5))),
            Trig::JavaSerialB64 => {
                let magic = &ctx.text[s..e];
                let exact = matches!(magic, "rO0AB" | "KztAAU" | "s7QAF");
                // Inside a longer base64 run only at the start (the stream starts
                // with the magic) or as its own token.
                let start_ok = prev
                    .is_none_or(|c| !c.is_ascii_alphanumeric() && c != b'+' && c != b'/')
                    || pat == "s7qaf";
                exact.then_some((
                    rules::CODE_DESERIALIZATION,
                    if start_ok { STRONG } else { 0 },
                ))
            }
            Trig::JavaSerialHex => {
                if prev.is_some_and(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                Some((rules::CODE_DESERIALIZATION, STRONG))
            }
            Trig::Ognl => {
                if pat == "%{" {
                    // `%{#...}`, `%{(#...)}`, `%{@...}`: OGNL evaluation in Struts.
                    let rest = after.trim_start_matches([' ', '(', '\t']);
                    if !rest.starts_with(['#', '@']) {
                        return None;
                    }
                }
                Some((rules::CODE_EXPRESSION, STRONG))
            }
            Trig::Spel => {
                if prev.is_some_and(is_word) {
                    return None;
                }
                Some((rules::CODE_EXPRESSION, STRONG))
            }
            Trig::ElOpen => {
                let inner = braced(after, "}")?;
                if is_arith_probe(inner) {
                    return Some((rules::CODE_TEMPLATE, ctx.discounted(STRONG)));
                }
                if dangerous_expr(inner) {
                    return Some((rules::CODE_EXPRESSION, STRONG));
                }
                None
            }
            Trig::Mustache => {
                let inner = braced(after, "}}")?;
                if is_arith_probe(inner) {
                    return Some((rules::CODE_TEMPLATE, ctx.discounted(STRONG)));
                }
                if dangerous_expr(inner)
                    || inner.contains("|attr(")
                    || inner.contains("self.") && inner.contains('(')
                {
                    return Some((rules::CODE_TEMPLATE, STRONG));
                }
                None
            }
            Trig::ErbOpen => {
                let rest = after.trim_start_matches(['=', '-', '#', '@', '!']);
                let inner = braced(rest, "%>")?;
                if inner.trim().is_empty() {
                    return None;
                }
                if is_arith_probe(inner) || dangerous_expr(inner) {
                    return Some((rules::CODE_TEMPLATE, STRONG));
                }
                // Statements (`if`, `end`, assignments, calls) rather than a word.
                let t = inner.trim();
                let code = t.contains(['(', '.', '=', '[', '\'', '"'])
                    || ["if ", "end", "for ", "each", "else", "include", "import"]
                        .iter()
                        .any(|k| t.starts_with(k));
                Some((
                    rules::CODE_TEMPLATE,
                    if code { ctx.discounted(STRONG) } else { 3 },
                ))
            }
            Trig::Dunder => None,
            Trig::Perl => {
                braced(after, "]}")?;
                Some((rules::CODE_TEMPLATE, ctx.discounted(STRONG)))
            }
            Trig::TemplateExec => match pat {
                "#set(" => {
                    // Velocity: `#set($x = ...)` reaching a class.
                    (after.trim_start().starts_with('$')
                        && (l.contains(".class") || l.contains("getclass")))
                    .then_some((rules::CODE_TEMPLATE, STRONG))
                }
                "__${" => braced(after, "}__").map(|_| (rules::CODE_TEMPLATE, STRONG)),
                _ => Some((rules::CODE_TEMPLATE, STRONG)),
            },
            Trig::Node => Some((rules::CODE_JS, ctx.discounted(STRONG))),
            Trig::NodeSerial => {
                if pat.starts_with('x') && &ctx.text[s..e] != "XyQkTkRfRlVOQyQkX" {
                    return None;
                }
                Some((rules::CODE_DESERIALIZATION, STRONG))
            }
            Trig::Proto => {
                // A key path (`__proto__[x]=`, `{"__proto__": ...}` keys) rather than
                // a word in a sentence.
                if ctx.prose() {
                    return Some((rules::CODE_PROTOTYPE_POLLUTION, 3));
                }
                Some((rules::CODE_PROTOTYPE_POLLUTION, STRONG))
            }
            Trig::JsLoop => {
                // `while(true);` as a whole value: a denial of service sent to `eval`.
                if !l[..s].trim().is_empty() {
                    return None;
                }
                let inner = braced(after, ")")?;
                let constant = inner.split(|c: char| !c.is_ascii_alphabetic()).all(|w| {
                    matches!(
                        w,
                        "" | "true"
                            | "this"
                            | "new"
                            | "date"
                            | "infinity"
                            | "null"
                            | "nan"
                            | "object"
                            | "array"
                    )
                });
                constant.then_some((rules::CODE_JS, STRONG))
            }
            Trig::Xml => {
                if pat == "<!doctype" {
                    // An external DTD (`SYSTEM "http://..."`) fetches on parse, but
                    // XHTML doctypes look the same; weak alone.
                    let decl = &after[..after.find(['[', '>']).unwrap_or(after.len())];
                    return (decl.contains(" system ") || decl.contains(" system\""))
                        .then_some((rules::CODE_XXE, 4));
                }
                let decl = &after[..after.find('>').unwrap_or(after.len())];
                let param = decl.trim_start().starts_with('%');
                let external = decl.contains("system") || decl.contains("public");
                if param || external {
                    return Some((rules::CODE_XXE, STRONG));
                }
                // Internal entities: a few nested ones are a billion-laughs bomb.
                let n = l.matches("<!entity").count();
                Some((rules::CODE_XXE, if n >= 3 { STRONG } else { 5 }))
            }
        }
    }

    /// Score of a Java class reference: a bare (possibly dotted) identifier is a
    /// type name given to a deserializer or Struts parameter binder; inside code it
    /// is `base`; inside prose it is talk about Java.
    #[allow(clippy::unused_self)]
    fn class_score(&self, s: usize, e: usize, ctx: &mut Ctx<'_>, base: u32) -> u32 {
        let t = ctx.lower.trim();
        let ident = |c: u8| is_word(c) || matches!(c, b'.' | b'$' | b'[' | b']');
        if t.bytes().all(ident) {
            // As a parameter name, cookie name or JSON key, a class name is bound
            // by Struts-style binders; as a value, a runtime or gadget class is a
            // type hint for a deserializer, but `java.io.File` may be a search.
            return if base >= STRONG || !ctx.is_value {
                STRONG
            } else {
                6
            };
        }
        // Token around the match: `ProcessBuilder.evil.clonetransformer`.
        let b = ctx.lower.as_bytes();
        let ts = b[..s].iter().rposition(|c| !ident(*c)).map_or(0, |p| p + 1);
        let te = b[e..]
            .iter()
            .position(|c| !ident(*c))
            .map_or(b.len(), |p| e + p);
        let token = &ctx.lower[ts..te];
        if ctx.prose() {
            return 2;
        }
        if token.matches('.').count() >= 2 && base < STRONG {
            return 5;
        }
        base
    }
}

/// Characters of the engine's "plain" inputs (words, numbers, ids).
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b' ' | b'_' | b',' | b'.')
}

/// A leftmost-longest DFA: this matcher runs on every input, and no prefilter
/// helps with anchors as short and varied as `{{` and `exec`.
#[allow(clippy::expect_used)]
fn dfa(patterns: &[&str]) -> AhoCorasick {
    // Compile-time constant patterns; a failure is caught by every unit test.
    AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .build(patterns)
        .expect("built-in patterns compile")
}

/// After a function name: optional closers of a wrapped callable (`)`, `]`, `"`,
/// `[0]`), blanks and comments, then `(`. Returns the offset just past `(` and
/// whether anything unusual (comments, line breaks, wrappers) sat in between.
fn call_follows(s: &str) -> Option<(usize, bool)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut odd = false;
    let mut steps = 0;
    while i < b.len() && steps < 32 {
        steps += 1;
        match b[i] {
            b'(' => return Some((i + 1, odd)),
            b' ' => i += 1,
            b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' | b')' | b']' | b'"' | b'\'' => {
                odd = true;
                i += 1;
            }
            b'[' | b'{' => {
                // `[0]`, `{0}` index after a wrapped name.
                let close = if b[i] == b'[' { b']' } else { b'}' };
                let n = b[i + 1..].iter().position(|c| *c == close)?;
                if n > 8 {
                    return None;
                }
                odd = true;
                i += n + 2;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let n = s[i + 2..].find("*/")?;
                odd = true;
                i += n + 4;
            }
            b'#' => {
                let n = s[i..].find('\n')?;
                odd = true;
                i += n + 1;
            }
            _ => return None,
        }
    }
    None
}

/// Content between an opener (already consumed) and `close`, bounded.
fn braced<'a>(s: &'a str, close: &str) -> Option<&'a str> {
    let p = s.find(close)?;
    (p <= 512).then(|| &s[..p])
}

/// `7*7`, `7 * '7'`, `1337+1`: a template engine probe, numbers and one operator.
fn is_arith_probe(inner: &str) -> bool {
    let t = inner.trim();
    let mut digits = 0;
    let mut ops = 0;
    for c in t.bytes() {
        match c {
            b'0'..=b'9' => digits += 1,
            b'*' | b'+' | b'-' | b'/' | b'%' => ops += 1,
            b' ' | b'\'' | b'"' | b'(' | b')' | b'.' => {}
            _ => return false,
        }
    }
    digits >= 2
        && ops >= 1
        && t.bytes()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == b'(' || c == b'\'' || c == b'"')
}

/// An expression that reaches classes, processes or the interpreter.
fn dangerous_expr(inner: &str) -> bool {
    const MARKERS: &[&str] = &[
        "getclass",
        "forname",
        "getruntime",
        "exec(",
        "processbuilder",
        "classloader",
        "java.lang",
        ".class.",
        "''.class",
        "\"\".class",
        "new java",
        "popen",
        "subprocess",
        "os.system",
        "import(",
        "__import__",
        "require(",
        "constructor",
        "mainmodule",
        "getmethod",
        "invoke(",
        "scriptengine",
        "eval(",
        "system(",
        "request.getparameter",
        "facescontext",
        "applicationscope",
        "@java",
    ];
    MARKERS.iter().any(|m| inner.contains(m))
}

/// Five alphabetic words in a row (`a` and `I` count), separated by single
/// spaces: a sentence.
pub(crate) fn is_prose(lower: &str) -> bool {
    let mut run = 0;
    for w in lower.split([' ', '\n']) {
        let w = w.trim_end_matches([',', '.', '?', '!', ':', ';']);
        let wordy = !w.is_empty()
            && w.bytes()
                .all(|c| c.is_ascii_alphabetic() || c == b'\'' || c >= 0x80);
        if wordy {
            run += 1;
            if run >= 5 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use crate::detect::tests::{q, run};
    use crate::detect::{Action, Category};

    fn body(json: &str) -> Action {
        run(&format!(
            "POST /api/v1/posts HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        ))
        .1
    }

    fn code_score(json: &str) -> u32 {
        let raw = format!(
            "POST /api/v1/posts HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        run(&raw)
            .0
            .iter()
            .filter(|v| v.category == Category::Code)
            .map(|v| v.score)
            .sum()
    }

    fn rules(raw: &str) -> Vec<&'static str> {
        run(raw)
            .0
            .iter()
            .filter(|v| v.category == Category::Code)
            .map(|v| v.rule)
            .collect()
    }

    #[test]
    fn php() {
        for p in [
            "<?php system('id'); ?>",
            "%3C%3F%09php%20echo%20%22test%22",
            "<?= `id` ?>",
            "<? echo 1;",
            "[php]echo 'x';[/php]",
            "{PHP}echo 1",
            "$_SERVER['test'];",
            "$_%53ERVER['x']",
            "php://filter/convert.base64-encode/resource=index",
            "phar://./uploads/x.jpg",
            "expect://id",
            "base64_deCOde(",
            "posix_getpwuiD('foo', 25)",
            "file_ExistS (\n\n)",
            "(system)(ls);",
            "(/* c */system)(ls/* c */);",
            "[system][0](ls);",
            "\"system\"(ls);",
            "exec\n('bar')",
            "exec /*foo*/ ()",
            "eval($foo)",
            "O:8:\"stdClass\":1:{s:1:\"a\";i:2;}",
            "auto_prepend_file=php://input",
        ] {
            assert_eq!(q(&urlenc(p)), Action::Ban, "{p}");
        }
    }

    #[test]
    fn java() {
        for p in [
            "java.lang.Runtime",
            "java.lang.ProcessBuilder",
            "java.ProcessBuilder",
            "ProcessBuilder.evil.clonetransformer",
            "runtime.invokertransformer",
            "com.opensymphony.xwork2",
            "rO0ABXNyABFqYXZh",
            "KztAAU",
            "aced00057372",
            "%{(#_='multipart/form-data').(#dm=@ognl.OgnlContext@DEFAULT_MEMBER_ACCESS)}",
            "${T(java.lang.Runtime).getRuntime().exec('id')}",
            "#{''.getClass().forName('java.lang.Runtime')}",
            "@java.lang.Runtime@getRuntime().exec('id')",
            "<java><object class=\"java.beans.XMLDecoder\"></object></java>",
        ] {
            assert_eq!(q(&urlenc(p)), Action::Ban, "{p}");
        }
        // Class names as parameter names, cookies and JSON keys.
        for raw in [
            "POST /p HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 19\r\n\r\njava.io.File=test&a",
            "GET / HTTP/1.1\r\nCookie: java.lang.Runtime=test\r\n\r\n",
            "POST /p HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{\"com.sun.org.apache\": \"test\"}  ",
        ] {
            assert_eq!(run(raw).1, Action::Ban, "{raw}");
        }
    }

    #[test]
    fn templates_and_node() {
        for p in [
            "{{7*7}}",
            "{{ 7 * '7' }}",
            "#{7*7}",
            "<%= 7*7 %>",
            "<% if True %>49<% endif %>",
            "{{''.__class__.__mro__[1].__subclasses__()}}",
            "{{config.__class__.__init__.__globals__['os'].popen('id').read()}}",
            "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('id') }}",
            "${\"freemarker.template.utility.Execute\"?new()(\"id\")}",
            "__${T(java.lang.Runtime).getRuntime().exec('id')}__::.x",
            "@{[system 'id']}",
            "@{[ uc 'hello' ]}",
            "this.constructor.constructor('return process')()",
            "require('child_process').exec('id')",
            "_$$ND_FUNC$$_function(){require('child_process')}()",
            "XyQkTkRfRlVOQyQkX2Z1bmN0aW9u",
            "while(!0);",
            "while(true);",
        ] {
            assert_eq!(q(&urlenc(p)), Action::Ban, "{p}");
        }
    }

    #[test]
    fn prototype_pollution() {
        for raw in [
            "GET /get?constructor%5Bprototype%5D%5Btest%5D%3Dtest HTTP/1.1\r\n\r\n",
            "GET /get?a[constructor][prototype]=image HTTP/1.1\r\n\r\n",
            "GET /get?__proto__[admin]=1 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(run(raw).1, Action::Ban, "{raw}");
        }
        assert_eq!(
            body(r#"{"title":{"__proto__":{"isAdmin":true}}}"#),
            Action::Ban
        );
    }

    #[test]
    fn xxe() {
        for b in [
            "<?xml version=\"1.0\"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><foo>&xxe;</foo>",
            "<!DOCTYPE doc [<!ENTITY % dtd SYSTEM \"http://x/\"> %dtd;]><a/>",
            "<!DOCTYPE l [<!ENTITY a \"a\"><!ENTITY b \"&a;&a;\"><!ENTITY c \"&b;&b;\">]><l>&c;</l>",
        ] {
            let raw = format!(
                "POST /api HTTP/1.1\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            );
            assert!(rules(&raw).contains(&"code.xxe"), "{b}");
            assert_eq!(run(&raw).1, Action::Ban, "{b}");
        }
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "java tutorial",
            "java.io.File",
            "java.runtime.version",
            "system requirements (minimum)",
            "exec summary (Q3)",
            "Prices: $a for adults (children free)",
            "{{name}}",
            "Hello {{ user.first_name }}, your order {{order.id}} shipped",
            "${amount} (incl. VAT)",
            "#{user.name}",
            "price 7*7",
            "50% off <% sale %>",
            "info:1",
            "video:8",
            "radio:5",
            "array_sum",
            "while you wait",
            "<?xml version=\"1.0\"?><a/>",
            "$(document).ready(function() { init(); })",
            "regex.exec(str)",
            "https://www.php.net/manual/en/function.base64-decode.php",
        ] {
            assert_ne!(q(&urlenc(p)), Action::Ban, "{p}");
        }
        for j in [
            r#"{"question":"How do I read a file line by line with java.io.BufferedReader in Java 17?","tags":["java"]}"#,
            r#"{"body":"Why does <?php echo htmlspecialchars($name); ?> print nothing when the form is empty?"}"#,
            r#"{"body":"Is calling Runtime.getRuntime().exec(cmd) safe if I validate the command first?"}"#,
            r#"{"body":"What is the difference between __proto__ and prototype in JavaScript objects?"}"#,
            r#"{"template":"Hi {{name}}, your code is {{code}}."}"#,
            r#"{"body":"In Python, why does my class define __init__ but the __class__ attribute looks wrong?"}"#,
            r#"{"snippet":"<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">"}"#,
        ] {
            // Other detectors have their own view of `<?php` (cmdi); this one
            // must not ban prose on its own.
            assert!(code_score(j) < crate::detect::STRONG, "{j}");
        }
    }

    /// Percent-encodes what the query helper would not.
    fn urlenc(s: &str) -> String {
        let mut out = String::new();
        for c in s.bytes() {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                out.push(c as char);
            } else {
                out.push_str(&format!("%{c:02X}"));
            }
        }
        out
    }
}
