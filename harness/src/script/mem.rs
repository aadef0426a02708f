//! `mem`: guest memory, physical and virtual (through the vCPU's page tables).

use mlua::{Lua, Table};

use super::convert::{add_fn, from_lua_int, to_lua_int, ApiResult, Shared};
use crate::vm::{access, memory, paging, regs::paging_regs};

/// Largest single read or fill a script may ask for.
const MAX_LEN: u64 = 64 << 20;

fn check_len(len: i64) -> ApiResult<usize> {
    let n = u64::try_from(len).map_err(|_| format!("length {len} is negative"))?;
    if n > MAX_LEN {
        return Err(format!("length {n} is larger than the {MAX_LEN}-byte limit").into());
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn read_phys(st: &Shared, addr: u64, buf: &mut [u8]) -> ApiResult<()> {
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    if memory::read_phys(m.memory(), addr, buf) {
        Ok(())
    } else {
        Err(format!("address {addr:#x} (+{}) is outside guest RAM", buf.len()).into())
    }
}

fn write_phys(st: &Shared, addr: u64, buf: &[u8]) -> ApiResult<()> {
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    if memory::write_phys(m.memory(), addr, buf) {
        Ok(())
    } else {
        Err(format!("address {addr:#x} (+{}) is outside guest RAM", buf.len()).into())
    }
}

fn read_virt(st: &Shared, addr: u64, buf: &mut [u8]) -> ApiResult<()> {
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    let pregs = paging_regs(&m.sregs()?);
    access::read_virt(m.memory(), &pregs, addr, buf).map_err(|e| e.to_string().into())
}

fn write_virt(st: &Shared, addr: u64, buf: &[u8]) -> ApiResult<()> {
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    let pregs = paging_regs(&m.sregs()?);
    access::write_virt(m.memory(), &pregs, addr, buf).map_err(|e| e.to_string().into())
}

type Reader = fn(&Shared, u64, &mut [u8]) -> ApiResult<()>;
type Writer = fn(&Shared, u64, &[u8]) -> ApiResult<()>;

fn read_cstr(st: &Shared, addr: u64, max: usize, read: Reader) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 64];
    while out.len() < max {
        let n = chunk.len().min(max - out.len());
        // Read byte by byte at the end of what is readable, so a string that ends
        // just before an unmapped page still reads.
        let at = addr.wrapping_add(out.len() as u64);
        if read(st, at, &mut chunk[..n]).is_err() {
            for i in 0..n {
                let mut b = [0u8; 1];
                read(st, at.wrapping_add(i as u64), &mut b)?;
                if b[0] == 0 {
                    return Ok(out);
                }
                out.push(b[0]);
            }
            continue;
        }
        if let Some(end) = chunk[..n].iter().position(|&c| c == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

fn register_set(
    lua: &Lua,
    t: &Table,
    st: &Shared,
    prefix: &str,
    read: Reader,
    write: Writer,
) -> mlua::Result<()> {
    for (bits, bytes) in [(8u32, 1usize), (16, 2), (32, 4), (64, 8)] {
        add_fn(
            lua,
            t,
            st,
            "mem",
            &format!("{prefix}read{bits}"),
            move |_, st, addr: i64| {
                let mut b = [0u8; 8];
                read(st, from_lua_int(addr), &mut b[..bytes])?;
                Ok(to_lua_int(u64::from_le_bytes(b)))
            },
        )?;
        add_fn(
            lua,
            t,
            st,
            "mem",
            &format!("{prefix}write{bits}"),
            move |_, st, (addr, v): (i64, i64)| {
                write(
                    st,
                    from_lua_int(addr),
                    &from_lua_int(v).to_le_bytes()[..bytes],
                )
            },
        )?;
    }
    add_fn(
        lua,
        t,
        st,
        "mem",
        &format!("{prefix}read"),
        move |lua, st, (addr, len): (i64, i64)| {
            let mut buf = vec![0u8; check_len(len)?];
            read(st, from_lua_int(addr), &mut buf)?;
            Ok(lua.create_string(&buf)?)
        },
    )?;
    add_fn(
        lua,
        t,
        st,
        "mem",
        &format!("{prefix}write"),
        move |_, st, (addr, data): (i64, mlua::LuaString)| {
            write(st, from_lua_int(addr), &data.as_bytes())
        },
    )?;
    add_fn(
        lua,
        t,
        st,
        "mem",
        &format!("{prefix}read_cstr"),
        move |lua, st, (addr, max): (i64, Option<i64>)| {
            let bytes = read_cstr(
                st,
                from_lua_int(addr),
                check_len(max.unwrap_or(4096))?,
                read,
            )?;
            Ok(lua.create_string(&bytes)?)
        },
    )?;
    add_fn(
        lua,
        t,
        st,
        "mem",
        &format!("{prefix}write_cstr"),
        move |_, st, (addr, s): (i64, mlua::LuaString)| {
            let mut bytes = s.as_bytes().to_vec();
            bytes.push(0);
            write(st, from_lua_int(addr), &bytes)
        },
    )?;
    Ok(())
}

/// Registers the `mem` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    register_set(lua, &t, st, "", read_phys, write_phys)?;
    register_set(lua, &t, st, "v", read_virt, write_virt)?;
    add_fn(
        lua,
        &t,
        st,
        "mem",
        "fill",
        |_, st, (addr, len, byte): (i64, i64, i64)| {
            let n = check_len(len)?;
            let b =
                u8::try_from(byte).map_err(|_| format!("fill byte {byte} is not in 0..=255"))?;
            write_phys(st, from_lua_int(addr), &vec![b; n])
        },
    )?;
    add_fn(lua, &t, st, "mem", "translate", |lua, st, addr: i64| {
        let mut s = st.borrow_mut();
        let m = s.machine()?;
        let pregs = paging_regs(&m.sregs()?);
        match paging::translate(m.memory(), &pregs, from_lua_int(addr)) {
            Ok(tr) => {
                let info = lua.create_table()?;
                info.set("page_size", to_lua_int(tr.page_size))?;
                info.set("writable", tr.writable)?;
                info.set("user", tr.user)?;
                info.set("executable", tr.executable)?;
                Ok((
                    mlua::Value::Integer(to_lua_int(tr.phys)),
                    mlua::Value::Table(info),
                ))
            }
            Err(e) => Ok((
                mlua::Value::Nil,
                mlua::Value::String(lua.create_string(e.to_string())?),
            )),
        }
    })?;
    lua.globals().set("mem", t)
}
