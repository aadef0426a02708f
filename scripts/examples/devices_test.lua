-- Host-side device access (pio.*, mmio.*, qtest style) and devices written in
-- Lua (dev.pio, dev.mmio), seen from the host and from the `poke` guest.
local guest = require("lunavm.guest")

budget = { time = "1s", wall = "20s" }

local UART, LSR, LSR_DR, LSR_THRE = 0x3f8, 0x3fd, 0x01, 0x20

-- A device that records every access as "r OFF SIZE" / "w OFF SIZE VALUE".
local function recorder(log, value)
  return {
    read = function(off, size)
      log[#log + 1] = string.format("r %d %d", off, size)
      return value + off
    end,
    write = function(off, size, v)
      log[#log + 1] = string.format("w %d %d 0x%x", off, size, v)
    end,
  }
end

function test_pio_reaches_the_uart()
  vm.boot{guest = "poke"}
  -- The transmitter is idle: LSR.THRE. Byte-wide registers repeat on wider reads.
  local lsr = pio.inb(LSR)
  t.neq(lsr & LSR_THRE, 0, "LSR.THRE")
  t.eq(pio.inw(LSR), lsr | lsr << 8)
  t.eq(pio.inl(LSR), lsr * 0x01010101)
  -- Writes to THR go out on the serial port: the UART takes the low byte.
  pio.outb(UART, 65)
  pio.outw(UART, 0x4242)
  pio.outl(UART, 0x43)
  t.eq(serial.output(), "ABC")
  -- Input queued with serial.write is in the receive FIFO: LSR.DR, then RBR.
  t.eq(pio.inb(LSR) & LSR_DR, 0)
  serial.write("z")
  t.neq(pio.inb(LSR) & LSR_DR, 0, "LSR.DR")
  t.eq(pio.inb(UART), string.byte("z"))
  t.eq(pio.inb(LSR) & LSR_DR, 0)
  -- A host-side write to the debug-exit port does not stop anything.
  pio.outb(0xf4, 7)
  guest.run_to_sync(1)
  -- Unclaimed ports read all-ones.
  t.eq(pio.inb(0x510), 0xff)
  t.eq(pio.inl(0x510), 0xffffffff)
end

function test_pio_on_a_lua_device()
  vm.boot{guest = "poke"}
  local log = {}
  local spec = recorder(log, 0x11223344)
  spec.base, spec.size, spec.name = 0x600, 8, "recorder"
  dev.pio(spec)
  t.eq(pio.inl(0x600), 0x11223344)
  t.eq(pio.inw(0x602), 0x3346, "masked to the access size")
  t.eq(pio.inb(0x607), 0x4b)
  pio.outb(0x603, 0x1ff)
  pio.outw(0x604, 0x12345)
  pio.outl(0x600, -1)
  t.eq(table.concat(log, ", "),
    "r 0 4, r 2 2, r 7 1, w 3 1 0xff, w 4 2 0x2345, w 0 4 0xffffffff")
end

function test_mmio_on_a_lua_device()
  vm.boot{guest = "poke"}
  local log = {}
  local spec = recorder(log, 0x0102030405060708)
  spec.base, spec.size = 0xd0000000, 0x1000
  dev.mmio(spec)
  t.eq(mmio.read8(0xd0000001), 0x09)
  t.eq(mmio.read16(0xd0000002), 0x070a)
  t.eq(mmio.read32(0xd0000004), 0x0506070c)
  t.eq(mmio.read64(0xd0000008), 0x0102030405060710)
  mmio.write8(0xd0000010, 0x1ab)
  mmio.write16(0xd0000012, 0xabcd)
  mmio.write32(0xd0000014, 0xdeadbeef)
  mmio.write64(0xd0000018, -2)
  t.eq(table.concat(log, ", "),
    "r 1 1, r 2 2, r 4 4, r 8 8, w 16 1 0xab, w 18 2 0xabcd, "
    .. "w 20 4 0xdeadbeef, w 24 8 0xfffffffffffffffe")
  -- No device there: all-ones.
  t.eq(mmio.read32(0xe0000000), 0xffffffff)
end

-- Step 7: the guest reads port 0x600 (prints it), writes 0xcafe to 0x600 and
-- 0x1234 to 0x602. Step 8: the same for MMIO at 0xd0000000/0xd0000004.
function test_devices_answer_the_guest()
  guest.boot_to_sync({guest = "poke"}, 6)
  local ports, regs = {}, {}
  local p = recorder(ports, 0x600d)
  p.base, p.size = 0x600, 4
  local m = recorder(regs, 0xfeed0000)
  m.base, m.size, m.name = 0xd0000000, 0x1000, "feed"
  local hp, hm = dev.pio(p), dev.mmio(m)
  t.neq(hp.id, hm.id)
  guest.run_to_sync(8)
  guest.expect_line("port 0x600: 0x600d")
  guest.expect_line("mmio 0xd0000000: 0xfeed0000")
  t.eq(table.concat(ports, ", "), "r 0 4, w 0 4 0xcafe, w 2 2 0x1234")
  t.eq(table.concat(regs, ", "), "r 0 4, w 4 4 0xbeef")
  local e = vm.exits()
  t.eq(e.unclaimed_pio_reads + e.unclaimed_pio_writes, 0)
  t.eq(e.unclaimed_mmio_reads + e.unclaimed_mmio_writes, 0)
end

-- Without read=, a device reads all-ones; without write=, writes are dropped.
-- The range is still claimed: nothing counts as unclaimed.
function test_device_defaults()
  guest.boot_to_sync({guest = "poke"}, 6)
  dev.pio{base = 0x600, size = 4}
  local writes = 0
  dev.mmio{base = 0xd0000000, size = 0x1000, write = function() writes = writes + 1 end}
  guest.run_to_sync(8)
  guest.expect_line("port 0x600: 0xffffffff")
  guest.expect_line("mmio 0xd0000000: 0xffffffff")
  t.eq(writes, 1)
  local e = vm.exits()
  t.eq(e.unclaimed_pio_reads, 0)
  t.eq(e.unclaimed_mmio_reads, 0)
end

-- A removed device no longer answers: its range is unclaimed again.
function test_device_remove()
  guest.boot_to_sync({guest = "poke"}, 6)
  local calls = 0
  local count = function() calls = calls + 1; return 0x1 end
  local d = dev.pio{base = 0x600, size = 4, read = count, write = count}
  local m = dev.mmio{base = 0xd0000000, size = 0x1000, read = count, write = count}
  t.eq(pio.inl(0x600), 1)
  t.eq(d:remove(), true)
  t.eq(hook.remove(m), true)
  t.eq(d:remove(), false, "already removed")
  calls = 0
  guest.run_to_sync(8)
  t.eq(calls, 0)
  guest.expect_line("port 0x600: 0xffffffff")
  guest.expect_line("mmio 0xd0000000: 0xffffffff")
  local e = vm.exits()
  t.eq(e.unclaimed_pio_reads, 1)
  t.eq(e.unclaimed_mmio_reads, 1)
  -- The range can be claimed again.
  dev.pio{base = 0x600, size = 4}
end

-- A device callback may stop the run: vm.run returns reason "hook" with the
-- device's handle id, right after the access.
function test_device_stops_the_run()
  guest.boot_to_sync({guest = "poke"}, 6)
  local d = dev.pio{base = 0x600, size = 4, write = function(off, size, v)
    if v == 0xcafe then vm.stop() end
  end}
  local ev = vm.run{}
  t.eq(ev.reason, "hook")
  t.eq(ev.hook, d.id)
  guest.expect_line("port 0x600: 0xffffffff")
  t.ok(not serial.output():find("mmio", 1, true), "stopped before step 8")
  guest.run_to_sync(7)
end

function test_device_errors()
  vm.boot{guest = "poke"}
  t.ok(guest.expect_error(dev.pio, {base = 0x3f8, size = 1}):find("overlaps serial", 1, true))
  t.ok(guest.expect_error(dev.pio, {base = 0xfffe, size = 4}):find("outside 0..=0xffff", 1, true))
  t.ok(guest.expect_error(dev.mmio, {base = 0xd0000000}):find("size=", 1, true))
  dev.mmio{base = 0xd0000000, size = 0x1000}
  t.ok(guest.expect_error(dev.mmio, {base = 0xd0000800, size = 0x10}):find("overlaps", 1, true))
end
