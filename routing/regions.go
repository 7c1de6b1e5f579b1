package routing

import "math"

// regionCoords are approximate (latitude, longitude) positions of Fly.io's
// public region codes. They give a sane static distance between regions until
// measured round-trip times exist; great-circle distance orders regions the
// way RTT mostly does.
var regionCoords = map[string][2]float64{
	"ams": {52.37, 4.90}, "arn": {59.65, 17.93}, "atl": {33.64, -84.43},
	"bog": {4.70, -74.14}, "bom": {19.09, 72.87}, "bos": {42.36, -71.01},
	"cdg": {49.01, 2.55}, "den": {39.86, -104.67}, "dfw": {32.90, -97.04},
	"ewr": {40.69, -74.17}, "eze": {-34.82, -58.54}, "fra": {50.03, 8.57},
	"gdl": {20.52, -103.31}, "gig": {-22.81, -43.25}, "gru": {-23.44, -46.47},
	"hkg": {22.31, 113.91}, "iad": {38.94, -77.46}, "jnb": {-26.14, 28.25},
	"lax": {33.94, -118.41}, "lhr": {51.47, -0.45}, "mad": {40.49, -3.57},
	"mia": {25.79, -80.29}, "nrt": {35.77, 140.39}, "ord": {41.98, -87.90},
	"otp": {44.57, 26.08}, "phx": {33.43, -112.01}, "qro": {20.62, -100.19},
	"scl": {-33.39, -70.79}, "sea": {47.45, -122.31}, "sin": {1.36, 103.99},
	"sjc": {37.36, -121.93}, "syd": {-33.94, 151.18}, "waw": {52.17, 20.97},
	"yul": {45.47, -73.74}, "yyz": {43.68, -79.63},
}

// Distance returns a static distance in kilometres between two regions: 0
// for the same region, great-circle distance for known region codes, and a
// large constant for unknown ones (so known regions sort first).
func Distance(a, b string) float64 { return distance(nil, a, b) }

// distance is Distance with extra coordinates that add to or override the
// built-in ones (config's region_coords).
func distance(extra map[string][2]float64, a, b string) float64 {
	if a == b {
		return 0
	}
	coords := func(r string) ([2]float64, bool) {
		if c, ok := extra[r]; ok {
			return c, true
		}
		c, ok := regionCoords[r]
		return c, ok
	}
	pa, okA := coords(a)
	pb, okB := coords(b)
	if !okA || !okB {
		return 1e6
	}
	const earthRadiusKm = 6371
	lat1, lon1 := pa[0]*math.Pi/180, pa[1]*math.Pi/180
	lat2, lon2 := pb[0]*math.Pi/180, pb[1]*math.Pi/180
	h := math.Pow(math.Sin((lat2-lat1)/2), 2) +
		math.Cos(lat1)*math.Cos(lat2)*math.Pow(math.Sin((lon2-lon1)/2), 2)
	return 2 * earthRadiusKm * math.Asin(math.Sqrt(h))
}
