-- Guest memory, physical and virtual: mem.*. Every write is checked by what the
-- `poke` guest prints afterwards (so a write that did nothing fails), every
-- read against a value the guest put there.
local guest = require("lunavm.guest")
local hex = require("lunavm.hex")

budget = { time = "1s", wall = "20s" }

-- Step 1: buf is a static char[256] holding "poke buffer".
function test_physical_strings()
  local ev = guest.boot_to_sync({guest = "poke"}, 1)
  local buf, size = ev.args[2], ev.args[3]
  t.eq(size, 256)
  t.eq(mem.read_cstr(buf), "poke buffer")
  t.eq(mem.read_cstr(buf, 4), "poke", "read_cstr stops at max")
  t.eq(mem.read(buf, 12), "poke buffer\0")
  t.eq(mem.read(buf, 0), "")

  mem.write_cstr(buf, "hello lua")    -- "hello lua\0r\0"
  t.eq(mem.read(buf, 12), "hello lua\0r\0", "write_cstr writes the NUL")
  mem.write(buf, "J")                 -- "Jello lua\0r\0"
  mem.fill(buf + 9, 3, 0x21)          -- "Jello lua!!!\0"
  mem.fill(buf + 200, 1, 0x5a)
  t.eq(mem.read_cstr(buf), "Jello lua!!!")
  t.eq(hex.bytes(mem.read(buf + 199, 3)), "00 5a 00")

  guest.run_to_sync(2)
  guest.expect_line("buf: Jello lua!!!")
  guest.expect_line("buf[200]: 0x5a")
end

-- Step 2: value is a static uint64_t, 0x1122334455667788.
function test_physical_integers()
  local ev = guest.boot_to_sync({guest = "poke"}, 2)
  local v = ev.args[2]
  t.eq(mem.read64(v), 0x1122334455667788)
  t.eq(mem.read32(v), 0x55667788)
  t.eq(mem.read32(v + 4), 0x11223344)
  t.eq(mem.read16(v), 0x7788)
  t.eq(mem.read16(v + 6), 0x1122)
  t.eq(mem.read8(v), 0x88)
  t.eq(mem.read8(v + 7), 0x11)

  -- Each narrower write lands on top of the wider one; values are truncated
  -- to the width.
  mem.write64(v, 0x0807060504030201)
  mem.write32(v + 4, 0x77ddccbbaa)     -- 0xddccbbaa
  mem.write16(v + 2, 0xeeff)
  mem.write8(v + 1, 0x1299)            -- 0x99
  t.eq(mem.read64(v), 0xddccbbaaeeff9901) -- above 2^63: a negative Lua integer
  t.eq(hex.u64(mem.read64(v)), "0xddccbbaaeeff9901")

  guest.run_to_sync(3)
  guest.expect_line("value: 0xddccbbaaeeff9901")
end

-- Step 3: the 4 KiB page at virtual 0xffff800000200000 maps alias_page
-- ("alias page"); the guest prints it through that virtual address.
function test_virtual_access()
  local ev = guest.boot_to_sync({guest = "poke"}, 3)
  local va, pa = ev.args[2], ev.args[3]
  t.eq(hex.u64(va), "0xffff800000200000")
  t.neq(va, pa)

  t.eq(mem.vread_cstr(va), "alias page")
  t.eq(mem.vread_cstr(va, 5), "alias")
  t.eq(mem.vread(va, 6), "alias ")
  t.eq(mem.vread8(va), string.byte("a"))
  t.eq(mem.vread16(va), mem.read16(pa))
  t.eq(mem.vread32(va + 1), mem.read32(pa + 1))
  t.eq(mem.vread64(va + 2), mem.read64(pa + 2))
  t.eq(mem.vread64(va), string.unpack("<i8", "alias pa"))

  mem.vwrite_cstr(va, "ABCDEFGHIJKLMNOP")  -- 16 bytes and a NUL
  mem.vwrite8(va, string.byte("a"))
  mem.vwrite16(va + 1, string.unpack("<I2", "bc"))
  mem.vwrite32(va + 3, string.unpack("<I4", "defg"))
  mem.vwrite64(va + 7, string.unpack("<i8", "hijklmno"))
  mem.vwrite(va + 15, "p!")                -- over the NUL
  -- The same bytes through the physical address.
  t.eq(mem.read_cstr(pa), "abcdefghijklmnop!")

  guest.run_to_sync(4)
  guest.expect_line("alias: abcdefghijklmnop!")
end

function test_translate()
  local ev = guest.boot_to_sync({guest = "poke"}, 3)
  local va, pa = ev.args[2], ev.args[3]
  local p, info = mem.translate(va)
  t.eq(p, pa)
  t.eq(info.page_size, 4096)
  t.eq(mem.translate(va + 0x123), pa + 0x123, "the offset in the page is kept")
  -- Unmapped: nil and the reason; reads and writes there raise.
  local none, why = mem.translate(va + 0x200000)
  t.eq(none, nil)
  t.eq(type(why), "string")
  t.ok(why:find("not mapped", 1, true), why)
  t.ok(guest.expect_error(mem.vread8, va + 0x200000):find("not mapped", 1, true))
  t.ok(guest.expect_error(mem.vwrite_cstr, va + 0x200000, "x"):find("not mapped", 1, true))
end

function test_errors_name_the_file_and_line()
  vm.boot{guest = "poke"}
  -- 128 MiB of RAM: 0x9000000 (144 MiB) is outside it.
  local ok, err = pcall(mem.read32, 0x9000000)
  t.eq(ok, false)
  t.eq(type(err), "string")
  t.ok(err:find("^[^:]*memory_test%.lua:%d+: mem%.read32: address 0x9000000"), err)
  t.ok(err:find("outside guest RAM", 1, true), err)
  t.ok(guest.expect_error(mem.write, 0x8000000 - 2, "abc"):find("outside guest RAM", 1, true))
  t.ok(guest.expect_error(mem.fill, 0x1000, 4, 256):find("not in 0..=255", 1, true))
  t.ok(guest.expect_error(mem.read, 0x1000, -1):find("negative", 1, true))
end

function test_memory_needs_a_machine()
  t.ok(guest.expect_error(mem.read8, 0):find("vm.boot", 1, true))
end
