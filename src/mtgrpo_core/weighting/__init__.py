"""Task weighting (Subroutines 1-2, SEC): `functions` holds each paper equation as one pure function; `rules`
the stateful rules built from them (IWU, minimax, SEC, uniform, fixed)."""
