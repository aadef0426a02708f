//! `pio` and `mmio`: host-side access to the emulated devices, qtest style: the
//! script reads and writes device registers directly, no guest involved.

use mlua::{Lua, Value};

use super::convert::{add_fn, from_lua_int, to_lua_int, ApiResult, Shared};
use crate::machine::intercept::Space;

/// Reads through a Lua device if one claims the address, else the bus.
fn read(st: &Shared, space: Space, addr: u64, size: u8) -> ApiResult<u64> {
    let dev = {
        let s = st.borrow();
        s.devices
            .iter()
            .find(|d| d.space == space && addr >= d.base && addr < d.base + d.size)
            .map(|d| (d.base, d.read.clone()))
    };
    if let Some((base, f)) = dev {
        return Ok(match f {
            Some(f) => match f.call::<Value>((to_lua_int(addr - base), size))? {
                Value::Integer(v) => from_lua_int(v),
                _ => u64::MAX,
            },
            None => u64::MAX,
        } & mask(size));
    }
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    Ok(match space {
        Space::Pio => m.io_read(port(addr)?, size),
        Space::Mmio => m.mmio_read(addr, size),
    })
}

fn write(st: &Shared, space: Space, addr: u64, size: u8, value: u64) -> ApiResult<()> {
    let dev = {
        let s = st.borrow();
        s.devices
            .iter()
            .find(|d| d.space == space && addr >= d.base && addr < d.base + d.size)
            .map(|d| (d.base, d.write.clone()))
    };
    if let Some((base, f)) = dev {
        if let Some(f) = f {
            f.call::<()>((
                to_lua_int(addr - base),
                size,
                to_lua_int(value & mask(size)),
            ))?;
        }
        return Ok(());
    }
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    // A host-side write to the debug-exit port does not end anything: only the
    // guest's writes stop runs.
    let _ = match space {
        Space::Pio => m.io_write(port(addr)?, size, value),
        Space::Mmio => m.mmio_write(addr, size, value),
    };
    Ok(())
}

fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    }
}

fn port(addr: u64) -> ApiResult<u16> {
    u16::try_from(addr).map_err(|_| format!("port {addr:#x} is not in 0..=0xffff").into())
}

/// Registers the `pio` and `mmio` namespaces (`pio`, not `io`: Lua's own `io`
/// library stays available).
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let io = lua.create_table()?;
    for (suffix, size) in [("b", 1u8), ("w", 2), ("l", 4)] {
        add_fn(
            lua,
            &io,
            st,
            "pio",
            &format!("in{suffix}"),
            move |_, st, p: i64| Ok(to_lua_int(read(st, Space::Pio, from_lua_int(p), size)?)),
        )?;
        add_fn(
            lua,
            &io,
            st,
            "pio",
            &format!("out{suffix}"),
            move |_, st, (p, v): (i64, i64)| {
                write(st, Space::Pio, from_lua_int(p), size, from_lua_int(v))
            },
        )?;
    }
    lua.globals().set("pio", io)?;
    let mmio = lua.create_table()?;
    for (bits, size) in [(8u32, 1u8), (16, 2), (32, 4), (64, 8)] {
        add_fn(
            lua,
            &mmio,
            st,
            "mmio",
            &format!("read{bits}"),
            move |_, st, a: i64| Ok(to_lua_int(read(st, Space::Mmio, from_lua_int(a), size)?)),
        )?;
        add_fn(
            lua,
            &mmio,
            st,
            "mmio",
            &format!("write{bits}"),
            move |_, st, (a, v): (i64, i64)| {
                write(st, Space::Mmio, from_lua_int(a), size, from_lua_int(v))
            },
        )?;
    }
    lua.globals().set("mmio", mmio)
}
