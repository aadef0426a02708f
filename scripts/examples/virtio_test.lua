-- The virtio devices from the host side: frames to and from the network
-- card, the second console's streams, the disk's contents, device state and
-- notification hooks, with the built-in `virtio` guest driving the devices.
local guest = require("lunavm.guest")

budget = { time = "1s", wall = "30s" }

local ETHERTYPE = "\x88\xb5"

-- A frame to the guest's MAC with `text` as payload.
local function frame_to(mac, text)
  return mac .. "\x02\x00\x00\x00\x00\x99" .. ETHERTYPE .. text
end

function test_frames_go_both_ways()
  vm.boot{guest = "virtio", net = true, cmdline = "frames=2 netwait=2"}
  serial.expect("net: sent 2 frames\n")
  local f1, f2 = virtio.recv("net"), virtio.recv("net")
  t.eq(virtio.recv("net"), nil, "only two frames")
  t.eq(f1:sub(1, 6), string.rep("\xff", 6), "broadcast")
  t.eq(f1:sub(13, 14), ETHERTYPE)
  t.eq(f1:sub(15), "lunavm frame 0")
  t.eq(f2:sub(15), "lunavm frame 1")
  local mac = f1:sub(7, 12)
  virtio.send("net", frame_to(mac, "pong one"))
  virtio.send(0, frame_to(mac, "pong two"))
  guest.finish(0)
  guest.expect_line("net: received 22 bytes: pong one")
  guest.expect_line("net: received 22 bytes: pong two")
  local st = virtio.state("net")
  t.eq(st.device.tx_frames, 2)
  t.eq(st.device.rx_frames, 2)
  t.eq(st.needs_reset, false)
end

function test_console_streams()
  vm.boot{guest = "virtio", vconsole = true, cmdline = "coninput=5"}
  virtio.write("console", "typed")
  guest.finish(0)
  t.eq(virtio.read("console"), "virtio-console: hello\n")
  t.eq(virtio.read("console"), "", "read consumes")
  guest.expect_line("console: wrote 22 bytes, read 'typed'")
end

function test_disk_contents_from_the_host()
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write("IMAGE---" .. string.rep("\0", 64 * 1024 - 8))
  f:close()
  vm.boot{guest = "virtio", disk = path, cmdline = "rounds=2"}
  -- The guest sees what the host writes before it looks.
  virtio.disk_write("blk", 0, "HOSTDATA")
  guest.finish(0)
  guest.expect_line("blk: capacity 128 sectors, id 'lunavm-disk0', sector 0 starts 48 4f 53 54 44 41 54 41")
  -- The guest's writes are in the overlay; the file is unchanged.
  local b = virtio.disk_read("blk", 4096, 8)
  t.neq(b, string.rep("\0", 8), "round 1 wrote sector 8")
  f = assert(io.open(path, "rb"))
  t.eq(f:read(8), "IMAGE---", "the image file never changes")
  f:close()
  os.remove(path)
  local ok, err = pcall(virtio.disk_read, "blk", 64 * 1024 - 4, 8)
  t.eq(ok, false)
  t.match(err, "outside the 65536%-byte disk")
end

function test_notification_hook_and_state()
  vm.boot{guest = "virtio", rng = true}
  local seen = {}
  hook.virtio{dev = "rng", fn = function(ev) seen[#seen + 1] = ev.value end}
  guest.finish(0)
  t.eq(#seen, 1, "one request")
  t.eq(seen[1], 0, "queue 0")
  local st = virtio.state("rng")
  t.eq(st.kind, "rng")
  t.eq(st.irq, 5)
  t.eq(st.live, true)
  t.eq(st.queues[1].ready, true)
  t.eq(st.queues[1].next_used, 1)
  t.eq(st.transport.notifications, 1)
  t.eq(st.device.bytes, 16)
end

function test_unknown_devices_are_named()
  vm.boot{guest = "hello", rng = true}
  local ok, err = pcall(virtio.recv, "net")
  t.eq(ok, false)
  t.match(err, 'no virtio device "net" %(the machine has: 0:rng%)')
  ok, err = pcall(virtio.send, 0, "x")
  t.match(err, "virtio device 0 is a rng device, not a network card")
  t.eq(#virtio.list(), 1)
  t.eq(virtio.list()[1].base, 0xd0000000)
end

function test_acpi_tables_describe_the_slots()
  vm.boot{guest = "hello", disk = "/dev/null", net = true}
  -- The RSDP sits where the BIOS-area scan finds it, and PVH points at it.
  t.eq(mem.read(0xe0000, 8), "RSD PTR ")
  t.eq(mem.read64(0x6000 + 32), 0xe0000, "hvm_start_info.rsdp_paddr")
  -- XSDT -> FADT -> DSDT, which names one LNRO0005 device per slot.
  local xsdt = mem.read64(0xe0000 + 24)
  t.eq(mem.read(xsdt, 4), "XSDT")
  local fadt = mem.read64(xsdt + 36)
  t.eq(mem.read(fadt, 4), "FACP")
  local dsdt = mem.read64(fadt + 140)
  t.eq(mem.read(dsdt, 4), "DSDT")
  local body = mem.read(dsdt, mem.read32(dsdt + 4))
  local _, n = body:gsub("LNRO0005", "")
  t.eq(n, 2, "two virtio slots")
  -- COM1, whose _HID is PNP0501 as a compressed EISA id.
  t.ok(body:find("COM1", 1, true), "COM1")
  t.ok(body:find("\x41\xd0\x05\x01", 1, true), "EISAID PNP0501")
end
