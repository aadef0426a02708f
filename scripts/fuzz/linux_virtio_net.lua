-- Fuzzes the Linux test-suite kernel's network receive path in kernel mode:
-- every input becomes one Ethernet frame in the receive queue of its virtio-net
-- card, which the kernel takes through virtnet_poll, the GRO and
-- __netif_receive_skb layers into ARP, IPv4 (options, fragments, routing),
-- ICMP, UDP and TCP, all from the snapshot of the booted kernel.
--
--   lunavm fuzz scripts/fuzz/linux_virtio_net.lua -- -max_total_time=300
--   lunavm fuzz scripts/fuzz/linux_virtio_net.lua --repro FILE
--
-- The kernel (scripts/linux/build-kernel.sh) boots once with its root on a
-- virtio disk and its card configured by `ip=` (linux.boot_rootfs, ~30-60 s
-- of wall time here); lunavm keeps that machine in lunavm-fuzz/linux_virtio_net/
-- point.snap and reuses it while it is newer than this file. Coverage comes
-- from breakpoints on the basic blocks of the receive path's functions
-- (fuzz_config.instrument), crashes are an oops, a panic or a warning
-- (breakpoints on __die, panic and __warn) and the kernel's BUG: reports on
-- the console.
--
-- An input is a control byte and the bytes of the frame (see `frame` below):
--
--   byte 0, bits 0-1  where the input's bytes start in the frame:
--                       0  after the Ethernet addresses (host to the guest's MAC):
--                          EtherType and payload from the input
--                       1  the same, to the broadcast address
--                       2  after an IPv4 header from the host to the guest:
--                          byte 1 is the IP protocol, the rest its message
--                       3  the whole frame from the input (addresses included)
--           bit 2     fix the checksums and lengths the kernel verifies
--                     first: the IPv4 header checksum and total length, the
--                     ICMP, UDP or TCP checksum (not in mode 3, not for
--                     fragments), so mutations reach the code behind them
--   bytes 1..         the rest of the frame
local linux = require("lunavm.linux")
local net = require("lunavm.net")

-- fuzz_config is read at top level in every process: the kernel's path
-- comes from linux.files() here, not from fuzz_setup.
fuzz_config = {
  elf = linux.files().vmlinux,
  -- An oops (every one goes through __die), a panic, a WARN_ON (__warn):
  -- breakpoints at their entry, with the kernel's backtrace.
  crash_symbols = { "panic", "__die", "__warn" },
  -- What the kernel reports on the console without those: the whole line,
  -- so the crash's title says which (`BUG: Bad page state`, `BUG:
  -- scheduling while atomic`, list corruption; an oops's `BUG: kernel NULL
  -- pointer dereference` line comes before its __die).
  crash_serial = "(BUG: |list_(add|del) corruption)[^\r\n]*\r?\n",
  -- The receive path, from the card to the protocols (and the ICMP/ARP/TCP
  -- replies it sends back); nothing that only timers or the boot run.
  instrument = "^(virtnet_(poll|receive|rx_.*)|receive_(small|big|mergeable|buf)|page_to_skb"
    .. "|skb_recv_done|virtqueue_napi_.*|napi_(gro_receive|skb_finish|complete_done|reuse_skb)"
    .. "|dev_gro_receive|gro_.*|inet_gro_.*|tcp4?_gro_.*|udp4?_gro_.*|eth_gro_.*|eth_type_trans"
    .. "|__?netif_receive_skb.*|netif_receive_skb.*|__netif_receive_skb_core.*|deliver_ptype_list_skb"
    .. "|ip_rcv.*|ip_list_rcv.*|ip_sublist_rcv.*|ip_local_deliver.*|ip_protocol_deliver_rcu"
    .. "|ip_route_input.*|ip_route_use_hint|ip_mkroute_input|__mkroute_input|fib_validate_source"
    .. "|__fib_validate_source|ip_defrag|ip_frag_.*|ip_check_defrag|inet_frag_.*|ip_expire"
    .. "|__?ip_options_.*|ip_options_.*|icmp_.*|__icmp_send|arp_.*|neigh_(lookup|event_ns|update|create)"
    .. "|__neigh_update|__neigh_create|udp_(rcv|err|unicast_rcv_skb|queue_rcv_skb|v4_early_demux)"
    .. "|__udp4_lib_.*|udp4_lib_lookup.*|udp4_csum_init|tcp_v4_(rcv|early_demux|send_reset|do_rcv"
    .. "|err|inbound_md5_hash)|tcp_checksum_complete|__inet_lookup_.*|raw_(local_deliver|rcv|v4_input"
    .. "|icmp_error)|packet_rcv.*|igmp_rcv|ip_mc_validate_source|__skb_checksum_complete.*"
    .. "|skb_checksum.*|pskb_trim_rcsum_slow|__pskb_pull_tail|__skb_flow_dissect|skb_flow_dissect.*)$",
  -- A run normally ends at fuzz_start's hook after a few microseconds of
  -- virtual time; 10 ms is the backstop (a frame the kernel keeps busy
  -- with; an idle kernel only waits for its next tick), and reaching it is
  -- not a hang.
  max_time = "10ms",
  done_at_budget = true,
}

local HOST_MAC = net.mac("52:54:00:12:34:56")
local HOST_IP = net.ip(linux.NET.host)
local GUEST_IP = net.ip(linux.NET.guest)
local IP_TCP, IP_UDP = 6, 17

-- The kernel's last instruction before it returns to user mode (entry_64.S),
-- after all the work an interrupt left (softirqs, a woken ksoftirqd).
local RETURN_TO_USER = "swapgs_restore_regs_and_return_to_usermode"

-- Runs until the kernel is about to return to /init's user-mode loop: a
-- point where it has nothing left to do.
local function run_to_user_mode(k, timeout)
  local ev = vm.run{ breakpoint = k:addr(RETURN_TO_USER), time = timeout }
  assert(ev.reason == "breakpoint", "the kernel did not return to user mode: " .. ev.reason)
end

-- Runs once: boot, wait until the kernel has started /init (an exec that
-- takes it a while after "Run /init"), let it learn the host's MAC (an ARP
-- exchange) and answer one ping, so the fuzz point has a warm neighbour
-- table and route; then stop where the kernel returns to the idle /init.
-- Every input starts there, with the kernel quiescent.
function fuzz_setup()
  linux.boot_rootfs{ timeout = "40s" }
  local k = linux.symbols()
  run_to_user_mode(k, "10s")
  virtio.send("net", net.arp_request(HOST_MAC, HOST_IP, GUEST_IP))
  local _, arp = net.wait_frame(function(_, p) return p.arp ~= nil and p.arp.op == net.ARP_REPLY end,
    { timeout = "1s" })
  local guest_mac = arp.arp.sha
  virtio.send("net", net.ping_frame{ src_mac = HOST_MAC, dst_mac = guest_mac, src_ip = HOST_IP,
    dst_ip = GUEST_IP, id = 1, seq = 1, payload = "lunavm" })
  net.wait_frame(function(_, p) return p.icmp ~= nil end,
    { timeout = "1s", arp = { mac = HOST_MAC, ip = HOST_IP } })
  vm.run{ time = "20ms" }
  run_to_user_mode(k, "1s")
  while virtio.recv("net") do end
  return { guest_mac = net.mac_str(guest_mac), return_to_user = k:addr(RETURN_TO_USER) }
end

-- Frames delivered (or dropped) by the card when the run started, and
-- whether this run's input made a frame at all.
local rx_before, sent = 0, false

-- The run of an input ends as soon as the kernel, having taken the frame
-- and acknowledged the card's interrupt, returns to /init: the spinning
-- /init makes no exits, so the rest of the budget would pass only through
-- the host-timed kicks that move virtual time (20 ms of wall time each, and
-- a determinism hole). Crashes on the way are caught as before.
function fuzz_start(ctx)
  hook.exec(ctx.return_to_user, function()
    local st = virtio.state("net")
    local taken = st.device.rx_frames + st.device.dropped > rx_before
    if st.interrupt_status == 0 and (taken or not sent) then
      vm.stop()
    end
  end)
end

-- The checksum of an L4 segment with the IPv4 pseudo-header.
local function l4_checksum(src, dst, proto, seg)
  return net.checksum(src .. dst .. string.pack(">BBI2", 0, proto, #seg) .. seg)
end

-- `pkt` with its ICMP, UDP or TCP checksum fixed (offsets 2, 6, 16 of the
-- segment); unchanged when it is too short or a fragment.
local function fix_l4(pkt, ihl)
  local frag = string.unpack(">I2", pkt, 7) & 0x3fff
  local proto = pkt:byte(10)
  local seg = pkt:sub(ihl + 1)
  local off = ({ [net.IP_ICMP] = 2, [IP_UDP] = 6, [IP_TCP] = 16 })[proto]
  if frag ~= 0 or not off or #seg < off + 2 then return pkt end
  seg = seg:sub(1, off) .. "\0\0" .. seg:sub(off + 3)
  local sum
  if proto == net.IP_ICMP then
    sum = net.checksum(seg)
  else
    sum = l4_checksum(pkt:sub(13, 16), pkt:sub(17, 20), proto, seg)
  end
  return pkt:sub(1, ihl) .. seg:sub(1, off) .. string.pack(">I2", sum) .. seg:sub(off + 3)
end

-- An IPv4 packet (`pkt`, from its header on) with its total length, header
-- checksum and L4 checksum fixed; unchanged when it is not IPv4 or its
-- header is cut short.
local function fix_ipv4(pkt)
  if #pkt < 20 or pkt:byte(1) >> 4 ~= 4 then return pkt end
  local ihl = (pkt:byte(1) & 0xf) * 4
  if ihl < 20 or #pkt < ihl then return pkt end
  pkt = pkt:sub(1, 2) .. string.pack(">I2", math.min(#pkt, 0xffff)) .. pkt:sub(5)
  pkt = fix_l4(pkt, ihl)
  local header = pkt:sub(1, 10) .. "\0\0" .. pkt:sub(13, ihl)
  return header:sub(1, 10) .. string.pack(">I2", net.checksum(header)) .. pkt:sub(13)
end

-- The frame an input stands for (see the top of the file).
local function frame(input, guest_mac)
  if #input == 0 then return nil end
  local control, rest = input:byte(1), input:sub(2)
  local mode, fix = control & 3, control & 4 ~= 0
  if mode == 3 then return rest end
  local dst = mode == 1 and net.BROADCAST or guest_mac
  if mode == 2 then
    local proto = rest:byte(1) or 0
    local pkt = net.ipv4{ src = HOST_IP, dst = GUEST_IP, proto = proto, payload = rest:sub(2) }
    if fix then pkt = fix_ipv4(pkt) end
    return net.ethernet{ dst = dst, src = HOST_MAC, type = net.ETH_IPV4, payload = pkt }
  end
  local f = dst .. HOST_MAC .. rest
  if fix and #rest >= 2 and string.unpack(">I2", rest) == net.ETH_IPV4 then
    f = f:sub(1, 14) .. fix_ipv4(f:sub(15))
  end
  return f
end

-- Runs for each input, after the restore: the frame goes into the card's
-- receive queue (the device writes it with a zeroed virtio-net header as
-- soon as the guest has a buffer posted, which it has at the fuzz point).
function fuzz_inject(input, ctx)
  local st = virtio.state("net")
  rx_before = st.device.rx_frames + st.device.dropped
  local f = frame(input, net.mac(ctx.guest_mac))
  -- Bytes beyond the largest frame the driver's buffers take are cut off.
  sent = f ~= nil
  if sent then virtio.send("net", f:sub(1, 1518)) end
end
