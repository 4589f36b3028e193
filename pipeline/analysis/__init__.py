"""Reading results back: summaries with CIs, seed groups, paired tests, comparisons, plots
and the Model Registry."""
