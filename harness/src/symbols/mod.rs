//! Guest symbol tables: loaded from an ELF file (a Linux `vmlinux`, a built-in
//! guest, any guest ELF) or from a `System.map`, looked up by name and
//! resolved from an address to `name+0x12`; and frame-pointer backtraces of
//! the vCPU's stack ([`backtrace`]).
//!
//! Resolution searches only code symbols (functions and labels in executable
//! sections of an ELF; `t`/`T`/`w`/`W` lines of a `System.map`), so a code
//! address never resolves to a data symbol or a per-CPU offset. A code symbol
//! covers its size when the ELF gives one, else everything up to the next
//! code symbol.

pub mod backtrace;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

pub use backtrace::{backtrace, backtrace_from, BacktraceError, Frame, FrameRegs};

/// Errors of loading a symbol table.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    /// The file cannot be read.
    #[error("Cannot read the symbol file {path}")]
    Read {
        /// Its path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data starts like an ELF file but does not parse as one.
    #[error("Not a valid ELF file: {0}")]
    Elf(#[from] object::Error),
    /// A `System.map` line is not `ADDRESS TYPE NAME`.
    #[error("System.map line {line}: expected \"ADDRESS TYPE NAME\", got {text:?}")]
    MapLine {
        /// 1-based line number.
        line: usize,
        /// The line (cut to 80 characters).
        text: String,
    },
    /// The file holds no symbol at all (a stripped ELF, an empty map).
    #[error("No symbols found (a stripped ELF file or an empty System.map?)")]
    Empty,
}

/// One symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Its name.
    pub name: String,
    /// Its address (a guest-virtual address for a kernel).
    pub addr: u64,
    /// Its size in bytes, when the file gives one (ELF; never System.map).
    pub size: Option<u64>,
    /// Whether it is code (resolvable from an address).
    pub code: bool,
    /// Whether it is global (preferred by [`Symbols::lookup`] over a local
    /// symbol of the same name).
    pub global: bool,
}

/// An address resolved to the code symbol that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The symbol's name.
    pub name: &'a str,
    /// The symbol's address.
    pub addr: u64,
    /// How far into the symbol the address is.
    pub offset: u64,
}

impl fmt::Display for Resolved<'_> {
    /// `name` at the symbol's start, else `name+0x12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.offset == 0 {
            f.write_str(self.name)
        } else {
            write!(f, "{}+{:#x}", self.name, self.offset)
        }
    }
}

/// A symbol table: name to address, and code address to symbol.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    /// Every symbol, sorted by address (then name).
    all: Vec<Symbol>,
    /// Name to index in `all` (the preferred symbol of that name).
    by_name: HashMap<String, usize>,
    /// Indices in `all` of the code symbols, sorted by address; at one address
    /// only the preferred symbol (sized, global, first by name).
    code: Vec<usize>,
}

impl Symbols {
    /// The symbols of an ELF file's symbol table (`.symtab`, else `.dynsym`):
    /// every defined, named symbol except section and file symbols.
    pub fn from_elf(data: &[u8]) -> Result<Symbols, SymbolsError> {
        use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
        let file = object::File::parse(data)?;
        let mut syms = Vec::new();
        let table: Vec<object::Symbol<'_, '_>> = if file.symbols().next().is_some() {
            file.symbols().collect()
        } else {
            file.dynamic_symbols().collect()
        };
        for s in table {
            if s.is_undefined() || matches!(s.kind(), SymbolKind::Section | SymbolKind::File) {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            if name.is_empty() {
                continue;
            }
            let in_code_section = s
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .is_some_and(|sec| sec.kind() == SectionKind::Text);
            let code =
                in_code_section && matches!(s.kind(), SymbolKind::Text | SymbolKind::Unknown);
            syms.push(Symbol {
                name: name.to_string(),
                addr: s.address(),
                size: (s.size() != 0).then_some(s.size()),
                code,
                global: s.is_global(),
            });
        }
        Symbols::from_symbols(syms)
    }

    /// The symbols of a `System.map` (`nm -n` output: `ADDRESS TYPE NAME` per
    /// line). Types `t T w W` are code; upper case is global; any other
    /// one-character type (`d`, `A`, `?`, ...) is a data symbol. Blank lines are
    /// skipped; any other line that is not of that form is an error.
    pub fn from_system_map(text: &str) -> Result<Symbols, SymbolsError> {
        let mut syms = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || SymbolsError::MapLine {
                line: i + 1,
                text: line.chars().take(80).collect(),
            };
            let mut parts = line.split_whitespace();
            // nm prints undefined symbols without an address: `U name`.
            if let [kind, _] = line.split_whitespace().collect::<Vec<_>>()[..] {
                if matches!(kind, "U" | "w" | "v") {
                    continue;
                }
            }
            let (Some(addr), Some(kind), Some(name), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let addr = u64::from_str_radix(addr, 16).map_err(|_| bad())?;
            let mut kc = kind.chars();
            let (Some(k), None) = (kc.next(), kc.next()) else {
                return Err(bad());
            };
            if matches!(k, 'U' | 'u' | 'v' | 'V') && addr == 0 {
                continue; // undefined or weak object with no definition
            }
            syms.push(Symbol {
                name: name.to_string(),
                addr,
                size: None,
                code: matches!(k, 't' | 'T' | 'w' | 'W'),
                global: k.is_ascii_uppercase(),
            });
        }
        Symbols::from_symbols(syms)
    }

    /// Loads `path`: an ELF file when it starts with the ELF magic, else a
    /// `System.map`.
    pub fn load(path: &Path) -> Result<Symbols, SymbolsError> {
        let data = std::fs::read(path).map_err(|source| SymbolsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if data.starts_with(b"\x7fELF") {
            Symbols::from_elf(&data)
        } else {
            Symbols::from_system_map(&String::from_utf8_lossy(&data))
        }
    }

    /// A table of the given symbols (in any order).
    pub fn from_symbols(mut all: Vec<Symbol>) -> Result<Symbols, SymbolsError> {
        if all.is_empty() {
            return Err(SymbolsError::Empty);
        }
        all.sort_by(|a, b| a.addr.cmp(&b.addr).then_with(|| a.name.cmp(&b.name)));
        let mut by_name: HashMap<String, usize> = HashMap::with_capacity(all.len());
        for (i, s) in all.iter().enumerate() {
            match by_name.get(&s.name) {
                Some(&j) if all[j].global || !s.global => {}
                _ => {
                    by_name.insert(s.name.clone(), i);
                }
            }
        }
        // One code symbol per address: the sized one, then the global one,
        // then the first by name.
        let mut code: Vec<usize> = Vec::new();
        for (i, s) in all.iter().enumerate() {
            if !s.code {
                continue;
            }
            let rank = |x: &Symbol| (x.size.is_some(), x.global);
            match code.last_mut() {
                Some(j) if all[*j].addr == s.addr => {
                    if rank(s) > rank(&all[*j]) {
                        *j = i;
                    }
                }
                _ => code.push(i),
            }
        }
        Ok(Symbols { all, by_name, code })
    }

    /// How many symbols the table holds.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether the table is empty (never true for a loaded table).
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The address of the symbol `name` (a global one when there are several).
    pub fn lookup(&self, name: &str) -> Option<u64> {
        self.symbol(name).map(|s| s.addr)
    }

    /// The symbol `name` (a global one when there are several).
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.by_name.get(name).map(|&i| &self.all[i])
    }

    /// The code symbol holding `addr` and the offset into it; None when
    /// `addr` is below every code symbol, past a sized symbol's end (padding
    /// between functions), or past the last symbol when its size is unknown.
    pub fn resolve(&self, addr: u64) -> Option<Resolved<'_>> {
        let n = self.code.partition_point(|&i| self.all[i].addr <= addr);
        let idx = *self.code.get(n.checked_sub(1)?)?;
        let s = &self.all[idx];
        let offset = addr - s.addr;
        let inside = match s.size {
            Some(size) => offset < size,
            None => n < self.code.len() || offset == 0,
        };
        inside.then_some(Resolved {
            name: &s.name,
            addr: s.addr,
            offset,
        })
    }

    /// Every symbol, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.all.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000100 t helper
ffffffff81000180 T panic
ffffffff81000200 W weak_fn
ffffffff81800000 D some_data
0000000000000000 D fixed_percpu_data
                 U undefined_thing
ffffffff81900000 t helper
";

    #[test]
    fn system_map_lookup_and_resolve() {
        let s = Symbols::from_system_map(MAP).unwrap();
        assert_eq!(s.lookup("panic"), Some(0xffffffff81000180));
        assert_eq!(s.lookup("some_data"), Some(0xffffffff81800000));
        assert_eq!(s.lookup("nope"), None);
        // Two local `helper`s: the first by address.
        assert_eq!(s.lookup("helper"), Some(0xffffffff81000100));
        let r = s.resolve(0xffffffff81000192).unwrap();
        assert_eq!((r.name, r.offset), ("panic", 0x12));
        assert_eq!(r.to_string(), "panic+0x12");
        assert_eq!(s.resolve(0xffffffff81000180).unwrap().to_string(), "panic");
        // Two names at one address: the global one, then the first by name.
        assert_eq!(s.resolve(0xffffffff81000004).unwrap().name, "_text");
        // Data and per-CPU symbols never resolve a code address.
        assert_eq!(s.resolve(0x10), None);
        assert_eq!(s.resolve(0xffffffff81800010).unwrap().name, "weak_fn");
        // Past the last code symbol (size unknown): only its own address.
        assert_eq!(s.resolve(0xffffffff81900000).unwrap().name, "helper");
        assert_eq!(s.resolve(0xffffffff81900001), None);
        assert_eq!(s.resolve(0xffffffff80000000), None);
    }

    #[test]
    fn system_map_errors_name_the_line() {
        let e = Symbols::from_system_map("ffff T a\nxyz T b\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "System.map line 2: expected \"ADDRESS TYPE NAME\", got \"xyz T b\""
        );
        // nm's `?` (unknown type) is a symbol, not code.
        let s = Symbols::from_system_map("ffff ? a\n").unwrap();
        assert_eq!((s.lookup("a"), s.resolve(0xffff)), (Some(0xffff), None));
        assert!(matches!(
            Symbols::from_system_map("ffff TT a\n"),
            Err(SymbolsError::MapLine { line: 1, .. })
        ));
        assert!(matches!(
            Symbols::from_system_map("\n\n"),
            Err(SymbolsError::Empty)
        ));
    }

    #[test]
    fn elf_symbols_of_a_built_in_guest() {
        let g = crate::guests::find("watch").unwrap();
        let s = Symbols::from_elf(g.elf).unwrap();
        let bump = s.symbol("bump").unwrap();
        assert!(bump.code && bump.global);
        let size = bump.size.unwrap();
        assert!(size > 0);
        let r = s.resolve(bump.addr + size - 1).unwrap();
        assert_eq!((r.name, r.offset), ("bump", size - 1));
        // `watched` is data: it looks up but never resolves.
        let watched = s.lookup("watched").unwrap();
        assert!(s.resolve(watched).is_none_or(|r| r.name != "watched"));
        assert!(s.resolve(s.lookup("guest_main").unwrap()).unwrap().name == "guest_main");
    }

    #[test]
    fn elf_errors() {
        assert!(matches!(
            Symbols::from_elf(b"\x7fELF\x02\x01\x01garbage"),
            Err(SymbolsError::Elf(_))
        ));
        let e = Symbols::load(Path::new("/nonexistent/System.map")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/System.map"), "{e}");
    }
}
