"""`kubectl rectrain`: submit, list and watch RecTrainJobs."""
