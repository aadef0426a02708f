//! `virtio`: host-side access to the virtio devices (frames for the network
//! card, the second console's streams, the disk's contents), their state,
//! and `hook.virtio` on queue notifications. A device is named by its slot
//! number (0-based) or by its kind ("blk", "net", "console", "rng": the first
//! of that kind).

use mlua::{Lua, LuaSerdeExt, Table, Value};

use super::convert::{add_fn, from_lua_int, to_lua_int, ApiResult, Shared};
use super::vm::opt;
use crate::devices::bus::lock;
use crate::devices::virtio::blk::Blk;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::{status, VirtioDevice};
use crate::machine::virtio::VirtioSpec;
use crate::machine::Machine;

/// Offset of the QueueNotify register in a slot.
const QUEUE_NOTIFY: u64 = 0x50;

/// The virtio devices `vm.boot` options ask for: `disks = {"a.img", "b.img,rw"}`
/// (or `disk = "a.img"`), `net = true`, `vconsole = true`, `rng = true`, in
/// the CLI's slot order.
pub fn boot_devices(opts: &Option<Table>) -> ApiResult<Vec<VirtioSpec>> {
    let mut specs = Vec::new();
    if let Some(d) = opt::<String>(opts, "disk")? {
        specs.push(VirtioSpec::parse_disk(&d)?);
    }
    if let Some(list) = opt::<Vec<String>>(opts, "disks")? {
        for d in list {
            specs.push(VirtioSpec::parse_disk(&d)?);
        }
    }
    let pcap = opt::<String>(opts, "pcap")?.map(std::path::PathBuf::from);
    if pcap.is_some() && !opt::<bool>(opts, "net")?.unwrap_or(false) {
        return Err("pcap= needs net=true".into());
    }
    for (key, spec) in [
        ("net", VirtioSpec::Net { pcap }),
        ("vconsole", VirtioSpec::Console),
        ("rng", VirtioSpec::Rng),
    ] {
        if opt::<bool>(opts, key)?.unwrap_or(false) {
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// Finds the slot a script names.
fn slot(m: &Machine, which: &Value) -> ApiResult<usize> {
    let slots = m.virtio();
    let found = match which {
        Value::Integer(i) => usize::try_from(*i).ok().filter(|&i| i < slots.len()),
        Value::String(s) => {
            let kind = s.to_string_lossy();
            slots.iter().position(|s| s.spec.kind() == kind)
        }
        other => {
            return Err(format!(
                "a virtio device is a slot number or a kind (\"blk\", \"net\", \"console\", \"rng\"), not {}",
                other.type_name()
            )
            .into())
        }
    };
    found.ok_or_else(|| {
        let have: Vec<String> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{}", s.spec.kind()))
            .collect();
        format!(
            "no virtio device {} (the machine has: {})",
            describe(which),
            if have.is_empty() {
                "none; ask vm.boot for disks=, net=, vconsole= or rng=".to_string()
            } else {
                have.join(" ")
            }
        )
        .into()
    })
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        other => other.type_name().to_string(),
    }
}

/// Runs `f` on the device in the named slot, downcast to `T`.
fn with<T: 'static, R>(
    st: &Shared,
    which: &Value,
    what: &str,
    f: impl FnOnce(&mut T) -> R,
) -> ApiResult<R> {
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    let i = slot(m, which)?;
    let kind = m.virtio()[i].spec.kind();
    m.with_virtio(i, |d: &mut dyn VirtioDevice| {
        d.as_any_mut().downcast_mut::<T>().map(f)
    })
    .flatten()
    .ok_or_else(|| format!("virtio device {i} is a {kind} device, not {what}").into())
}

fn state(lua: &Lua, st: &Shared, which: Value) -> ApiResult<Table> {
    let mut s = st.borrow_mut();
    let m = s.machine()?;
    let i = slot(m, &which)?;
    let slot = &m.virtio()[i];
    let t = lock(&slot.transport);
    let out = lua.create_table()?;
    out.set("slot", i)?;
    out.set("kind", slot.spec.kind())?;
    out.set("base", to_lua_int(slot.base))?;
    out.set("irq", slot.irq)?;
    out.set("status", t.status())?;
    out.set("needs_reset", t.status() & status::DEVICE_NEEDS_RESET != 0)?;
    out.set("live", t.status() & status::DRIVER_OK != 0)?;
    out.set("features", to_lua_int(t.driver_features()))?;
    out.set("interrupt_status", t.interrupt_status())?;
    let stats = lua.to_value(t.stats())?;
    out.set("transport", stats)?;
    let queues = lua.create_table()?;
    for q in 0..t.device().queue_count() {
        if let Some(qs) = t.queue_state(q) {
            let e = lua.create_table()?;
            e.set("size", qs.size)?;
            e.set("ready", qs.ready)?;
            e.set("desc", to_lua_int(qs.desc_table))?;
            e.set("avail", to_lua_int(qs.avail_ring))?;
            e.set("used", to_lua_int(qs.used_ring))?;
            e.set("next_avail", qs.next_avail)?;
            e.set("next_used", qs.next_used)?;
            queues.push(e)?;
        }
    }
    out.set("queues", queues)?;
    let dev = t.device().as_any();
    let counters = if let Some(n) = dev.downcast_ref::<Net>() {
        lua.to_value(&n.stats())?
    } else if let Some(b) = dev.downcast_ref::<Blk>() {
        lua.to_value(&b.stats())?
    } else {
        lua.to_value(&t.device().save())?
    };
    out.set("device", counters)?;
    Ok(out)
}

/// Registers the `virtio` namespace and `hook.virtio`.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(lua, &t, st, "virtio", "list", |lua, st, ()| {
        let mut s = st.borrow_mut();
        let m = s.machine()?;
        let out = lua.create_table()?;
        for (i, slot) in m.virtio().iter().enumerate() {
            let e = lua.create_table()?;
            e.set("slot", i)?;
            e.set("kind", slot.spec.kind())?;
            e.set("base", to_lua_int(slot.base))?;
            e.set("irq", slot.irq)?;
            out.push(e)?;
        }
        Ok(out)
    })?;
    add_fn(lua, &t, st, "virtio", "state", |lua, st, which: Value| {
        state(lua, st, which)
    })?;
    add_fn(
        lua,
        &t,
        st,
        "virtio",
        "send",
        |_, st, (which, frame): (Value, mlua::LuaString)| {
            let bytes = frame.as_bytes().to_vec();
            let ok = with(st, &which, "a network card", |n: &mut Net| n.send(&bytes))?;
            if !ok {
                return Err(format!(
                    "a frame of {} bytes is larger than the {} bytes virtio-net carries",
                    bytes.len(),
                    crate::devices::virtio::net::MAX_FRAME
                )
                .into());
            }
            Ok(())
        },
    )?;
    add_fn(lua, &t, st, "virtio", "recv", |lua, st, which: Value| {
        let frame = with(st, &which, "a network card", |n: &mut Net| n.recv())?;
        Ok(match frame {
            Some(f) => Value::String(lua.create_string(&f)?),
            None => Value::Nil,
        })
    })?;
    add_fn(
        lua,
        &t,
        st,
        "virtio",
        "write",
        |_, st, (which, data): (Value, mlua::LuaString)| {
            let bytes = data.as_bytes().to_vec();
            with(st, &which, "a console", |c: &mut Console| {
                c.queue_input(&bytes)
            })
        },
    )?;
    add_fn(lua, &t, st, "virtio", "read", |lua, st, which: Value| {
        let out = with(st, &which, "a console", |c: &mut Console| c.take_output())?;
        Ok(lua.create_string(&out)?)
    })?;
    add_fn(
        lua,
        &t,
        st,
        "virtio",
        "disk_read",
        |lua, st, (which, offset, len): (Value, i64, i64)| {
            let (offset, len) = (from_lua_int(offset), from_lua_int(len));
            let data = with(st, &which, "a disk", |b: &mut Blk| {
                let disk = b.disk();
                if offset.checked_add(len).is_none_or(|end| end > disk.size()) || len > 1 << 30 {
                    return Err(format!(
                        "{len} bytes at {offset:#x} are outside the {}-byte disk",
                        disk.size()
                    ));
                }
                let mut buf = vec![0; crate::devices::virtio::to_usize(len)];
                disk.read(offset, &mut buf)
                    .map_err(|e| format!("the disk image: {e}"))?;
                Ok(buf)
            })??;
            Ok(lua.create_string(&data)?)
        },
    )?;
    add_fn(
        lua,
        &t,
        st,
        "virtio",
        "disk_write",
        |_, st, (which, offset, data): (Value, i64, mlua::LuaString)| {
            let offset = from_lua_int(offset);
            let bytes = data.as_bytes().to_vec();
            with(st, &which, "a disk", |b: &mut Blk| {
                let disk = b.disk();
                if offset
                    .checked_add(bytes.len() as u64)
                    .is_none_or(|end| end > disk.size())
                {
                    return Err(format!(
                        "{} bytes at {offset:#x} are outside the {}-byte disk",
                        bytes.len(),
                        disk.size()
                    ));
                }
                disk.write(offset, &bytes)
                    .map_err(|e| format!("the disk image: {e}"))
            })??;
            Ok(())
        },
    )?;
    lua.globals().set("virtio", t)?;

    // hook.virtio{dev=, fn=fn(ev)}: an MMIO hook on the slot's QueueNotify
    // register; ev.value is the queue the guest notified.
    let hook: Table = lua.globals().get("hook")?;
    add_fn(lua, &hook, st, "hook", "virtio", |lua, st, spec: Table| {
        let which: Value = spec.get("dev")?;
        let base = {
            let mut s = st.borrow_mut();
            let m = s.machine()?;
            let i = slot(m, &which)?;
            m.virtio()[i].base
        };
        let mmio = lua.create_table()?;
        mmio.set("addr", to_lua_int(base + QUEUE_NOTIFY))?;
        mmio.set("on", "write")?;
        mmio.set("fn", spec.get::<Value>("fn")?)?;
        super::dev::access_hook(st, crate::machine::intercept::Space::Mmio, mmio)
    })?;
    Ok(())
}
