-- The test-suite Linux kernel (scripts/linux/build-kernel.sh) on the
-- deterministic platform: booted once by setup_once, snapshotted, and every
-- test starts from the booted machine. The kernel has no initramfs: its root
-- file system is an ext2 image on a virtio disk (scripts/linux/build-rootfs.sh,
-- /init an idle loop with no system calls), and it configured its virtio-net
-- card itself (`ip=`), so frames sent from Lua get answers from its network
-- stack. A kernel panic caught by a breakpoint: linux_panic_test.lua.
local linux = require("lunavm.linux")
local net = require("lunavm.net")

budget = { time = "60s", wall = "900s" }

function setup_once()
  linux.boot_rootfs{timeout = "40s"}
end

-- The host's side of the network (the gateway of `ip=`).
local HOST_MAC = net.mac("52:54:00:12:34:56")
local HOST_IP = net.ip(linux.NET.host)
local GUEST_IP = net.ip(linux.NET.guest)

function test_the_kernel_reached_init()
  local out = serial.output()
  t.match(out, "Linux version 6%.1")
  t.match(out, "Command line: nokaslr clearcpuid=")
  t.match(out, "Run /init as init process")
end

function test_kunit_suites_pass()
  local results = linux.kunit_results(serial.output())
  t.ok(#results >= 3, "KUnit suites ran: " .. #results)
  t.eq(linux.report_kunit(serial.output()), 0, "failed suites")
end

function test_the_booted_kernel_keeps_running_from_the_snapshot()
  local before = serial.output()
  local ev = vm.run{time = "200ms"}
  t.eq(ev.reason, "time_budget")
  t.eq(serial.output(), before, "an idle init prints nothing more")
  t.ok(not serial.output():find("Kernel panic"), "no panic")
end

function test_the_root_file_system_is_the_virtio_disk()
  local out = serial.output()
  t.match(out, "virtio_blk virtio0: %[vda%] 4096 512%-byte logical blocks")
  t.match(out, "EXT4%-fs %(vda%): mounting ext2 file system using the ext4 subsystem")
  t.match(out, "VFS: Mounted root %(ext2 filesystem%) readonly on device 254:0%.")
  -- /init came from the disk: mounted before it ran, and no initramfs at all.
  t.ok(out:find("VFS: Mounted root") < out:find("Run /init as init process"), "mounted, then /init")
  t.ok(not out:find("initramfs"), "no initramfs")
  t.ok(not out:find("Kernel panic"), "no panic")
  -- The kernel read the disk through the virtio queue; the host sees the
  -- same ext2 superblock (magic 0xef53 at byte 56 of block 1).
  local blk = virtio.state("blk")
  t.ok(blk.device.reads > 0, "virtio-blk reads: " .. blk.device.reads)
  t.eq(blk.device.errors, 0)
  t.eq(string.unpack("<I2", virtio.disk_read("blk", 1024 + 56, 2)), 0xef53)
end

function test_the_kernel_configured_its_network()
  local out = serial.output()
  t.match(out, "IP%-Config: Complete:")
  t.match(out, "device=eth0, hwaddr=02:4c:55:4e:41:01, ipaddr=10%.0%.2%.15, mask=255%.255%.255%.0, gw=10%.0%.2%.2")
end

-- Asks who has the guest's address; the guest's ARP code answers.
local function arp_exchange()
  virtio.send("net", net.arp_request(HOST_MAC, HOST_IP, GUEST_IP))
  return net.wait_frame(function(_, p) return p.arp ~= nil and p.arp.op == net.ARP_REPLY end,
    {timeout = "1s"})
end

function test_arp_request_gets_a_reply()
  local frame, p = arp_exchange()
  t.eq(net.mac_str(p.eth.dst), "52:54:00:12:34:56", "to us")
  t.eq(net.mac_str(p.eth.src), "02:4c:55:4e:41:01", "from the guest's card")
  t.eq(p.eth.type, net.ETH_ARP)
  t.eq(net.mac_str(p.arp.sha), "02:4c:55:4e:41:01")
  t.eq(net.ip_str(p.arp.spa), "10.0.2.15")
  t.eq(p.arp.tha, HOST_MAC)
  t.eq(p.arp.tpa, HOST_IP)
  t.ok(#frame >= 42, "frame length " .. #frame)
end

function test_icmp_echo_request_gets_a_reply()
  local k = linux.symbols()
  local _, arp = arp_exchange()
  local guest_mac = arp.arp.sha
  local payload = "lunavm ping " .. string.rep("\x00\x01\xfe\xff", 8)
  virtio.send("net", net.ping_frame{src_mac = HOST_MAC, dst_mac = guest_mac, src_ip = HOST_IP,
    dst_ip = GUEST_IP, id = 0x4c56, seq = 7, ip_id = 0x1234, payload = payload})
  -- The request reaches the kernel's ICMP code: stop there and look at the
  -- path it took (a symbolised frame-pointer backtrace of the live kernel).
  local ev = vm.run{breakpoint = k:addr("icmp_rcv"), time = "1s"}
  t.eq(ev.reason, "breakpoint")
  local bt = linux.format_backtrace(k:backtrace())
  t.match(bt, "^icmp_rcv\nip_protocol_deliver_rcu%+0x%x+\nip_local_deliver%+0x%x+\n")
  for _, f in ipairs{"ip_list_rcv", "virtnet_poll", "net_rx_action", "handle_softirqs"} do
    t.match(bt, "\n" .. f .. "%+0x%x+\n", f .. " in\n" .. bt)
  end
  -- The softirq ran on the way out of the card's interrupt, or in ksoftirqd:
  -- which of the two varies between runs (most likely the host-timed
  -- forward-progress kicks that interrupt the spinning /init, a determinism
  -- hole lunavm counts in its run summary); the walk ends at the bottom of
  -- that stack either way.
  local last = bt:match("([^\n]+)$")
  t.ok(last:find("^common_interrupt%+") or last:find("^ret_from_fork%+"), "the last frame: " .. last)
  -- The reply.
  local _, p = net.wait_frame(function(_, q) return q.icmp ~= nil end,
    {timeout = "1s", arp = {mac = HOST_MAC, ip = HOST_IP}})
  t.eq(p.eth.dst, HOST_MAC)
  t.eq(p.eth.src, guest_mac)
  t.eq(p.ip.src, GUEST_IP)
  t.eq(p.ip.dst, HOST_IP)
  t.ok(p.ip.header_ok, "IPv4 header checksum")
  t.eq(p.icmp.type, net.ICMP_ECHO_REPLY)
  t.eq(p.icmp.code, 0)
  t.ok(p.icmp.checksum_ok, "ICMP checksum")
  t.eq(p.icmp.id, 0x4c56)
  t.eq(p.icmp.seq, 7)
  t.eq(p.icmp.payload, payload, "payload echoed")
end

function test_kernel_symbols_resolve()
  local f = linux.files()
  local addr = linux.symbol(f.system_map, "start_kernel")
  t.ok(addr ~= 0, "start_kernel")
  t.eq(addr >> 40, 0xffffff, "a kernel-text address (nokaslr)")
  -- vmlinux's ELF symbols and System.map agree.
  local k, map = linux.symbols(), sym.load(f.system_map)
  t.eq(k:addr("start_kernel"), addr)
  t.eq(map:addr("panic"), k:addr("panic"))
  t.eq(k:resolve(k:addr("panic") + 5), "panic+0x5")
  t.eq(map:resolve(k:addr("panic") + 5), "panic+0x5")
  -- A data symbol looks up but a code address never resolves to it.
  t.ok(k:lookup("jiffies") ~= nil, "jiffies")
  t.eq(k:resolve(0x10), nil)
end

-- An oops: a timer interrupt's handler made to jump to address 0. The
-- breakpoint on __die reports the faulting context; the kernel then panics.
function test_an_oops_is_caught_with_the_faulting_context()
  local k = linux.symbols()
  local ev = vm.run{breakpoint = k:addr("tick_handle_periodic"), time = "1s"}
  t.eq(ev.reason, "breakpoint")
  cpu.set("rip", 0)
  local r = linux.run_to_panic{timeout = "2s"}
  t.ok(r, "stopped at panic or __die")
  t.eq(r.kind, "oops")
  t.eq(r.message, "Oops")
  t.eq(r.regs.rip, 0, "the faulting RIP")
  t.eq(r.fault_backtrace[1].symbol, "0x0")
  t.match(linux.format_backtrace(r.fault_backtrace), "\n__handle_irq_event_percpu%+0x%x+\n")
  t.match(linux.format_backtrace(r.backtrace), "^__die\n")
  t.match(serial.output(), "BUG: kernel NULL pointer dereference, address: 0000000000000000")
  -- In an interrupt the oops is fatal.
  r = linux.run_to_panic{timeout = "2s"}
  t.ok(r, "the panic after the oops")
  t.eq(r.kind, "panic")
  t.eq(r.message, "Fatal exception in interrupt")
end
