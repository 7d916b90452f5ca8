"""wbc's benchmarks (`wbc bench`, `make bench`): speed and accuracy figures, outside the product
package; installed with it, so that `wbc bench` works outside a source checkout."""
