package gossip

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"
)

// Wire format. Every message and payload starts with a format version byte;
// a peer that speaks a newer major format is dropped, not misread. Within
// version 1 each record is length-prefixed, so a later minor change can
// append fields to a record and older nodes skip what they do not know.
//
//	message  = version(1) kind(1) uvarint(count) count*(uvarint(len) record)   kinds update, state
//	leave    = version(1) kind(1)=3 str(Name) varint(at, unix ns)
//	record   = str(ID) str(App) str(Region) str(Addr) str(Owner) str(State)
//	           uvarint(Version) varint(Updated, unix ns; 0: zero time)
//	           varint(Soft) varint(Hard) byte(Band) byte(flags) [future fields]
//	str      = uvarint(len) bytes
//	meta     = version(1) str(Region) str(BackhaulAddr) str(fingerprint, 0 or 32 raw bytes)
//	coord    = version(1) byte(dims) dims*float64 float64(Error) float64(Adjustment) float64(Height)
//
// Integers are Go's binary varints, floats IEEE 754 little-endian.
const (
	wireVersion = 1

	kindUpdate = 1 // a gossiped broadcast: one record
	kindState  = 2 // push/pull anti-entropy: every record the sender knows
	kindLeave  = 3 // a node's intent to leave, sent before memberlist's leave

	flagHealthy = 1 << 0
	flagDeleted = 1 << 1

	// maxStringBytes bounds every string of a record or of node metadata,
	// so that a peer cannot make this node allocate without limit.
	maxStringBytes = 1024
	// minRecordBytes is the smallest possible encoded record (six empty
	// strings, four one-byte varints, band and flags); it bounds the
	// count a message of a given size can claim.
	minRecordBytes = 12
)

var (
	errTruncated  = errors.New("truncated")
	errTooLong    = errors.New("string longer than 1024 bytes")
	errBadVersion = errors.New("unknown format version")
)

// encodeRecords encodes records as one message of the given kind.
func encodeRecords(kind byte, recs []Record) []byte {
	b := make([]byte, 0, 2+binary.MaxVarintLen64+len(recs)*96)
	b = append(b, wireVersion, kind)
	b = binary.AppendUvarint(b, uint64(len(recs)))
	var body []byte
	for i := range recs {
		body = appendRecord(body[:0], &recs[i])
		b = binary.AppendUvarint(b, uint64(len(body)))
		b = append(b, body...)
	}
	return b
}

func appendRecord(b []byte, r *Record) []byte {
	for _, s := range [...]string{r.ID, r.App, r.Region, r.Addr, r.Owner, r.State} {
		b = appendString(b, s)
	}
	b = binary.AppendUvarint(b, r.Version)
	var updated int64
	if !r.Updated.IsZero() {
		updated = r.Updated.UnixNano()
	}
	b = binary.AppendVarint(b, updated)
	b = binary.AppendVarint(b, int64(r.Soft))
	b = binary.AppendVarint(b, int64(r.Hard))
	var flags byte
	if r.Healthy {
		flags |= flagHealthy
	}
	if r.Deleted {
		flags |= flagDeleted
	}
	return append(b, r.Band, flags)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeRecords decodes a message, which must be of the kind wanted. It
// never panics and never allocates more than the message's size justifies;
// any malformation is an error and the whole message is dropped. Decoded
// strings do not share memory with buf, which the caller may reuse.
func decodeRecords(buf []byte, wantKind byte) ([]Record, error) {
	if len(buf) < 2 {
		return nil, errTruncated
	}
	if buf[0] != wireVersion {
		return nil, fmt.Errorf("%w %d", errBadVersion, buf[0])
	}
	if buf[1] != wantKind {
		return nil, fmt.Errorf("message kind %d, want %d", buf[1], wantKind)
	}
	d := decoder{buf: buf[2:]}
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.buf)/(minRecordBytes+1)) {
		return nil, fmt.Errorf("claims %d records in %d bytes", n, len(d.buf))
	}
	recs := make([]Record, 0, min(n, 1024)) // grows with what actually decodes
	for i := uint64(0); i < n && d.err == nil; i++ {
		size := d.uvarint()
		if d.err == nil && size > uint64(len(d.buf)) {
			d.err = errTruncated
		}
		if d.err != nil {
			break
		}
		rd := decoder{buf: d.buf[:size]}
		d.buf = d.buf[size:]
		r, err := rd.record()
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		recs = append(recs, r)
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.buf) != 0 {
		return nil, fmt.Errorf("%d bytes after the last record", len(d.buf))
	}
	return recs, nil
}

// decoder reads varints and strings from buf; the first error sticks and
// every later read returns zero values.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) == 0 {
		d.err = errTruncated
		return 0
	}
	c := d.buf[0]
	d.buf = d.buf[1:]
	return c
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > maxStringBytes {
		d.err = errTooLong
		return nil
	}
	if n > uint64(len(d.buf)) {
		d.err = errTruncated
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) float() float64 {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 8 {
		d.err = errTruncated
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(d.buf))
	d.buf = d.buf[8:]
	return v
}

// record decodes one record body; bytes after the fields it knows are
// fields of a later format and are ignored.
func (d *decoder) record() (Record, error) {
	var r Record
	r.ID = d.string()
	r.App = d.string()
	r.Region = d.string()
	r.Addr = d.string()
	r.Owner = d.string()
	r.State = d.string()
	r.Version = d.uvarint()
	if ns := d.varint(); ns != 0 {
		r.Updated = time.Unix(0, ns)
	}
	soft, hard := d.varint(), d.varint()
	r.Band = d.byte()
	flags := d.byte()
	if d.err != nil {
		return Record{}, d.err
	}
	if soft < math.MinInt32 || soft > math.MaxInt32 || hard < math.MinInt32 || hard > math.MaxInt32 {
		return Record{}, errors.New("limit out of range")
	}
	r.Soft, r.Hard = int(soft), int(hard)
	r.Healthy = flags&flagHealthy != 0
	r.Deleted = flags&flagDeleted != 0
	if r.ID == "" || r.Owner == "" {
		return Record{}, errors.New("record without id or owner")
	}
	return r, nil
}

// messageKind returns the kind of a gossiped message, 0 if it has none.
func messageKind(buf []byte) byte {
	if len(buf) < 2 {
		return 0
	}
	return buf[1]
}

// encodeLeave encodes node name's intent to leave, made at at (unix ns).
func encodeLeave(name string, at int64) []byte {
	b := []byte{wireVersion, kindLeave}
	b = appendString(b, name)
	return binary.AppendVarint(b, at)
}

func decodeLeave(buf []byte) (name string, at int64, err error) {
	if len(buf) < 2 {
		return "", 0, errTruncated
	}
	if buf[0] != wireVersion {
		return "", 0, fmt.Errorf("%w %d", errBadVersion, buf[0])
	}
	if buf[1] != kindLeave {
		return "", 0, fmt.Errorf("message kind %d, want %d", buf[1], kindLeave)
	}
	d := decoder{buf: buf[2:]}
	name, at = d.string(), d.varint()
	if d.err != nil {
		return "", 0, d.err
	}
	if name == "" {
		return "", 0, errors.New("leave without a name")
	}
	return name, at, nil
}

// meta is what a node carries in its memberlist metadata.
type meta struct {
	Region, BackhaulAddr, Fingerprint string // Fingerprint in lower-case hex
}

// encodeMeta encodes m; Fingerprint must be "" or 64 hex digits. With the
// lengths Start allows (region up to maxRegionBytes, backhaul address up to
// maxAddrBytes) the result is at most 356 bytes, under memberlist's limit
// of 512.
func encodeMeta(m meta) []byte {
	fp, _ := hex.DecodeString(m.Fingerprint)
	b := []byte{wireVersion}
	b = appendString(b, m.Region)
	b = appendString(b, m.BackhaulAddr)
	b = binary.AppendUvarint(b, uint64(len(fp)))
	return append(b, fp...)
}

func decodeMeta(buf []byte) (meta, error) {
	if len(buf) == 0 {
		return meta{}, errTruncated
	}
	if buf[0] != wireVersion {
		return meta{}, fmt.Errorf("%w %d", errBadVersion, buf[0])
	}
	d := decoder{buf: buf[1:]}
	m := meta{Region: d.string(), BackhaulAddr: d.string()}
	fp := d.bytes()
	if d.err != nil {
		return meta{}, d.err
	}
	if len(fp) != 0 && len(fp) != 32 {
		return meta{}, fmt.Errorf("fingerprint of %d bytes, want 32", len(fp))
	}
	m.Fingerprint = hex.EncodeToString(fp)
	return m, nil
}
