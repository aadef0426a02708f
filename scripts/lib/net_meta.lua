---@meta lunavm.net
-- LuaLS annotations for `require("lunavm.net")` (the code is lib/net.lua;
-- this file is never run). MAC and IPv4 addresses are binary strings.

---Ethernet, ARP, IPv4 and ICMP frames built and parsed in Lua.
---@class lunavm.net
---@field ETH_IPV4 integer 0x0800
---@field ETH_ARP integer 0x0806
---@field IP_ICMP integer 1
---@field ARP_REQUEST integer 1
---@field ARP_REPLY integer 2
---@field ICMP_ECHO_REPLY integer 0
---@field ICMP_ECHO_REQUEST integer 8
---@field BROADCAST string ff:ff:ff:ff:ff:ff
local net = {}

---"02:4c:55:4e:41:01" as 6 bytes.
---@param s string
---@return string
function net.mac(s) end

---6 bytes as "02:4c:55:4e:41:01".
---@param b string
---@return string
function net.mac_str(b) end

---"10.0.2.15" as 4 bytes.
---@param s string
---@return string
function net.ip(s) end

---4 bytes as "10.0.2.15".
---@param b string
---@return string
function net.ip_str(b) end

---The Internet checksum (RFC 1071); 0 over data carrying its correct checksum.
---@param bytes string
---@return integer
function net.checksum(bytes) end

---An Ethernet frame.
---@param f {dst: string, src: string, type: integer, payload?: string}
---@return string
function net.ethernet(f) end

---@param frame string
---@return {dst: string, src: string, type: integer, payload: string}?
function net.parse_ethernet(frame) end

---An ARP packet (IPv4 over Ethernet).
---@param a {op: integer, sha: string, spa: string, tha?: string, tpa: string}
---@return string
function net.arp(a) end

---@param p string
---@return {op: integer, sha: string, spa: string, tha: string, tpa: string}?
function net.parse_arp(p) end

---A broadcast ARP request frame.
---@param src_mac string
---@param src_ip string
---@param target_ip string
---@return string
function net.arp_request(src_mac, src_ip, target_ip) end

---An IPv4 packet with its header checksum.
---@param p {src: string, dst: string, proto: integer, payload?: string, id?: integer, ttl?: integer}
---@return string
function net.ipv4(p) end

---@param pkt string
---@return {version: integer, ihl: integer, total_length: integer, id: integer, ttl: integer, proto: integer, checksum: integer, src: string, dst: string, header_ok: boolean, payload: string}?
function net.parse_ipv4(pkt) end

---An ICMP echo message with its checksum.
---@param e {type?: integer, code?: integer, id?: integer, seq?: integer, payload?: string}
---@return string
function net.icmp_echo(e) end

---@param m string
---@return {type: integer, code: integer, checksum: integer, id: integer, seq: integer, payload: string, checksum_ok: boolean}?
function net.parse_icmp(m) end

---An Ethernet frame carrying an ICMP echo request.
---@param p {src_mac: string, dst_mac: string, src_ip: string, dst_ip: string, id?: integer, seq?: integer, payload?: string, ip_id?: integer}
---@return string
function net.ping_frame(p) end

---Every layer of a frame that parses: {eth=, arp=} or {eth=, ip=, icmp=}.
---@param frame string
---@return table
function net.parse(frame) end

---A host that answers the guest's ARP requests for its IP and ICMP echo
---requests to it: a function for `hook.virtio{dev=, fn=}` (it drains the
---device's transmitted frames) and the counts of what it answered.
---@param host {mac: string, ip: string}
---@param dev? lunavm.VirtioDev Default "net".
---@return fun(ev: table) fn
---@return {arp: integer, echo: integer} answered
function net.responder(host, dev) end

---Runs the guest until it sends a frame `match` accepts; returns it, its
---parse and the frames skipped. `opts.arp = {mac=, ip=}` answers ARP requests
---for that IP on the way.
---@param match fun(frame: string, parsed: table): boolean
---@param opts? {dev?: lunavm.VirtioDev, timeout?: lunavm.Duration, arp?: {mac: string, ip: string}}
---@return string frame
---@return table parsed
---@return string[] skipped
function net.wait_frame(match, opts) end

return net
